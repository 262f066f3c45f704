//! Fuzz target `virtqueue`: see `vhost_user_cross_domain::fuzz_harness::virtqueue`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vhost_user_cross_domain::fuzz_harness::virtqueue(data);
});
