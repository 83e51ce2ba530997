//! rsync's server arguments. The input is shell-split; unless it starts
//! with `rsync` itself, `rsync --server` is put in front, so the fuzzer
//! spends its time on the options and the destination.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut words) = shell_words::split(text) else {
        return;
    };
    if words.first().is_none_or(|w| w != "rsync") {
        words.splice(0..0, ["rsync".to_string(), "--server".to_string()]);
    }
    toppcloud_fuzz::check_rsync_words(&words);
});
