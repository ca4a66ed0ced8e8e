#![no_main]
// The body is botfleet::fuzz::update (src/fuzz.rs); its seed corpus is fuzz/corpus/update/.
// libfuzzer-sys's panic hook aborts at once, before the worker's own catch_unwind around
// teloxide's parser could answer 400: the default hook lets that unwinding happen, and any
// other panic still fails the run (libfuzzer-sys aborts on a panic that leaves the target).
libfuzzer_sys::fuzz_target!(
    init: {
        drop(std::panic::take_hook());
    },
    |data: &[u8]| botfleet::fuzz::update(data)
);
