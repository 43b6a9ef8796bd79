//! Fuzz target: `larder::fuzzing::config` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| larder::fuzzing::config(data));
