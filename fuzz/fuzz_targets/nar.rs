//! Fuzz target: `larder::fuzzing::nar` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| larder::fuzzing::nar(data));
