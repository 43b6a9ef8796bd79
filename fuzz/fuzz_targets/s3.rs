//! Fuzz target: `larder::fuzzing::s3` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| larder::fuzzing::s3(data));
