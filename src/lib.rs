//! `vhost-user-cross-domain`: a vhost-user virtio-gpu device that implements only the
//! cross-domain context type (capset 5) and connects each context to the host Unix socket
//! configured for the channel type the guest names in INIT.
//!
//! Module map:
//! - [`cli`]: the command line (clap definition, typed flag values).
//! - [`config`]: the validated configuration, the channel table (`TYPE:PATH`) and how the VMM
//!   reaches the daemon (`--socket-path`, `--fd`, socket activation).
//! - [`daemon`]: the serve loops (re-listening after a VMM disconnect, or one session on a
//!   connected socket), readiness notification, reload on SIGHUP, and shutdown on
//!   SIGTERM/SIGINT.
//! - [`reload`]: reading `--channels-file`, and putting the table it gives in force on SIGHUP.
//! - [`socket_path`]: claiming `--socket-path` (lock file, stale sockets) and releasing it.
//! - [`inherited`]: checks and ownership of the sockets the daemon is started with.
//! - [`relay`]: the framing-aware message relay behind `--fd`.
//! - [`systemd`]: socket activation and `sd_notify` readiness messages.
//! - [`sandbox`]: seccomp, Landlock, capabilities and the connection broker, entered once the
//!   vhost-user socket is open.
//! - [`device`]: the vhost-user backend (features, config space, queue events).
//! - [`virtio_gpu`]: virtio-gpu wire structs, control-queue dispatch, resources and fences.
//! - [`cross_domain`]: cross-domain wire structs, contexts, items and channel I/O.
//! - [`guest_mem`]: bounds-checked scatter-gather access to guest memory, used by both layers.
//! - [`logging`]: the logger (`--log-level`, `RUST_LOG`, the journal's format), fatal errors,
//!   the start-up summary.
//! - [`counters`]: what each channel type carried (SIGUSR1), open contexts in `STATUS=`.
//! - [`ratelimit`], [`limitlog`]: logging of guest-caused problems (a rate limit for all of
//!   them; limits hit are warned about once per context).
//! - [`idmap`]: hash maps keyed by small integer ids (contexts, resources, items).
//! - `fuzz_harness` (feature `fuzzing` only): entry points of the fuzz targets.
//!
//! The guest-side proxy and the wire formats it shares with the daemon are crates of their own
//! (`crates/cross-domain-proxy`, `crates/cross-domain-protocol`); `docs/architecture.md` maps
//! every file and the two data paths through them.

pub mod cli;
pub mod config;
pub mod counters;
pub mod cross_domain;
pub mod daemon;
pub mod device;
// Binds sockets under /tmp and exists for the fuzz targets and tests/fuzz_corpus.rs only, so it
// is not part of the default library.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz_harness;
pub mod guest_mem;
pub mod idmap;
pub mod inherited;
pub mod limitlog;
pub mod logging;
pub mod ratelimit;
pub mod relay;
pub mod reload;
pub mod sandbox;
pub mod socket_path;
pub mod systemd;
pub mod virtio_gpu;

pub use config::Config;
pub use daemon::{run, Error};
