//! Fuzz target `config`: see `vhost_user_cross_domain::fuzz_harness::config_parsers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vhost_user_cross_domain::fuzz_harness::config_parsers(data);
});
