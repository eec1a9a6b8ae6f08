#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_core::fuzz::audience_filter(data));
