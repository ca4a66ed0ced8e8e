#![no_main]
// The body is botfleet::fuzz::resume (src/fuzz.rs); its seed corpus is fuzz/corpus/resume/.
libfuzzer_sys::fuzz_target!(|data: &[u8]| botfleet::fuzz::resume(data));
