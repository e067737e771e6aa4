#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ringdown::fuzz_targets::journal(data);
});
