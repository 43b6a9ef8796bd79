//! Fuzz target: `larder::fuzzing::url_path` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| larder::fuzzing::url_path(data));
