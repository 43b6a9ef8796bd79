//! Fuzz target: `larder::fuzzing::narinfo` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| larder::fuzzing::narinfo(data));
