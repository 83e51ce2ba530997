//! app.ini, as a user's upload or push brings it: any text. The first byte
//! says which runner files exist (bit 0: main.py, bit 1: any other).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&files, rest)) = data.split_first() else {
        return;
    };
    // load() refuses text that is not UTF-8 before parsing.
    if let Ok(text) = std::str::from_utf8(rest) {
        toppcloud_fuzz::check_app_ini(text, files & 1 != 0, files & 2 != 0);
    }
});
