//! The SSH exec line, as any authenticated key may send it: bytes, read
//! the way the SSH server reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    toppcloud_fuzz::check_exec_line(&String::from_utf8_lossy(data));
});
