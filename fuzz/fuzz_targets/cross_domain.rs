//! Fuzz target `cross_domain`: see `vhost_user_cross_domain::fuzz_harness::cross_domain_commands`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vhost_user_cross_domain::fuzz_harness::cross_domain_commands(data);
});
