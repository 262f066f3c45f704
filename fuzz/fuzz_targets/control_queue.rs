//! Fuzz target `control_queue`: see `vhost_user_cross_domain::fuzz_harness::control_queue`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vhost_user_cross_domain::fuzz_harness::control_queue(data);
});
