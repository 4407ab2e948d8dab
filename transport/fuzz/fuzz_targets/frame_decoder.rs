//! Whatever bytes a peer sends, the frame reader and every payload decoder return an
//! error or a value: never a panic, a hang or an allocation past the frame bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    flotilla_transport::fuzz::decode_untrusted(data);
});
