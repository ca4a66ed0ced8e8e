#![no_main]
// The body is botfleet::fuzz::cursor (src/fuzz.rs); its seed corpus is fuzz/corpus/cursor/.
libfuzzer_sys::fuzz_target!(|data: &[u8]| botfleet::fuzz::cursor(data));
