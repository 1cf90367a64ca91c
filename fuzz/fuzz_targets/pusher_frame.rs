//! Fuzz target: `gateway_fuzz::pusher_frame` (see src/lib.rs for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_fuzz::pusher_frame(data));
