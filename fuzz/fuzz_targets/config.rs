//! Fuzz target: `gateway_fuzz::config` (see src/lib.rs for what it checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway_fuzz::config(data));
