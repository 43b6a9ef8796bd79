//! Fuzz target: `larder::fuzzing::store_path` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| larder::fuzzing::store_path(data));
