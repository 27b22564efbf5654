#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| failover_fuzz::wire(data));
