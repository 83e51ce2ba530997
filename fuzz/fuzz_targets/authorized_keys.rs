//! One line of the node's `authorized_keys` file, as `load` hands it to
//! the line parser (trimmed, not blank, not a comment).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines().map(str::trim) {
        if !line.is_empty() && !line.starts_with('#') {
            toppcloud_fuzz::check_authorized_keys_line(line);
        }
    }
});
