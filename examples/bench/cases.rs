//! The cases, their sizes and counts, and what each reports.

use crate::counters::SpanCosts;

/// Message size of the throughput cases: the most one RECEIVE carries (4096-byte ring minus the
/// 352-byte SEND/RECEIVE header), used in both directions.
pub const MSG: usize = 3744;
/// Message size of the round-trip case.
pub const RTT_MSG: usize = 64;
/// Payload of one READ or WRITE (4096-byte ring minus the 24-byte header).
pub const PIPE_CHUNK: usize = 4072;
/// Size of the memfd passed in the memfd case.
pub const MEMFD_SIZE: u64 = 4096;
/// Channel type the benchmark uses (any configured number works the same).
pub const CHANNEL: u32 = 2;
/// Channel type of the bulk cases' large-ring contexts: configured with `ring=1M`
/// (docs/protocol.md, "Large channel rings"), on the same host listener as [`CHANNEL`].
pub const LARGE_CHANNEL: u32 = 3;
/// Size of a large channel ring (the most `ring=` allows).
pub const LARGE_RING: usize = 1 << 20;
/// Message size of the bulk guest→host cases' "large" column: SEND and WRITE are not bounded by
/// any ring, so a guest that moves bulk data may send larger pieces, up to what the u16
/// `cmd_size` of a command allows (65535 bytes with the 352- or 24-byte header).
pub const BULK_MSG: usize = 63 << 10;
/// Contexts opened for the memory case.
pub const RSS_CONTEXTS: usize = 64;

/// How much each case moves per repetition.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub msgs: usize,
    pub rtts: usize,
    pub pipe_bytes: usize,
    pub fd_msgs: usize,
    pub memfd_msgs: usize,
    /// Bytes of each bulk transfer.
    pub bulk_bytes: usize,
    /// Count the device process's system calls in this repetition (the separate counted
    /// pass, see `counters.rs`); set by the bench, not by the mode.
    pub count_syscalls: bool,
}

impl Params {
    pub fn full() -> Self {
        Params {
            msgs: 50_000,
            rtts: 10_000,
            pipe_bytes: 16 << 20,
            fd_msgs: 5_000,
            memfd_msgs: 2_000,
            bulk_bytes: 64 << 20,
            count_syscalls: false,
        }
    }

    pub fn quick() -> Self {
        Params {
            msgs: 5_000,
            rtts: 1_000,
            pipe_bytes: 4 << 20,
            fd_msgs: 500,
            memfd_msgs: 300,
            bulk_bytes: 8 << 20,
            count_syscalls: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    GuestToHost,
    HostToGuest,
    RoundTrip,
    PipeRead,
    PipeWrite,
    FdPipeToGuest,
    FdPipeToHost,
    FdMemfd,
    BulkToGuest,
    BulkToHost,
    Memory,
}

pub const ALL: [Case; 11] = [
    Case::GuestToHost,
    Case::HostToGuest,
    Case::RoundTrip,
    Case::PipeRead,
    Case::PipeWrite,
    Case::FdPipeToGuest,
    Case::FdPipeToHost,
    Case::FdMemfd,
    Case::BulkToGuest,
    Case::BulkToHost,
    Case::Memory,
];

/// One reported number of a case.
pub struct Metric {
    pub name: String,
    pub unit: &'static str,
    pub higher_is_better: bool,
}

fn m(name: String, unit: &'static str, higher_is_better: bool) -> Metric {
    Metric {
        name,
        unit,
        higher_is_better,
    }
}

impl Case {
    /// Short name for `--only`.
    pub fn key(self) -> &'static str {
        match self {
            Case::GuestToHost => "g2h",
            Case::HostToGuest => "h2g",
            Case::RoundTrip => "rtt",
            Case::PipeRead => "pipe-read",
            Case::PipeWrite => "pipe-write",
            Case::FdPipeToGuest => "fd-pipe-h2g",
            Case::FdPipeToHost => "fd-pipe-g2h",
            Case::FdMemfd => "fd-memfd",
            Case::BulkToGuest => "bulk-h2g",
            Case::BulkToHost => "bulk-g2h",
            Case::Memory => "rss",
        }
    }

    pub fn from_key(k: &str) -> Option<Case> {
        ALL.into_iter().find(|c| c.key() == k)
    }

    /// Whether the case counts operations (the cost tables have a row for it).
    pub fn has_ops(self) -> bool {
        !matches!(self, Case::Memory | Case::BulkToGuest | Case::BulkToHost)
    }

    /// What one "operation" is, for CPU time per operation.
    pub fn op(self) -> &'static str {
        match self {
            Case::GuestToHost | Case::HostToGuest => "message",
            Case::RoundTrip => "round trip",
            Case::PipeRead => "READ",
            Case::PipeWrite => "WRITE",
            Case::FdPipeToGuest | Case::FdPipeToHost | Case::FdMemfd => "message",
            // Four transfers of different message sizes: no one operation.
            Case::BulkToGuest | Case::BulkToHost => "-",
            Case::Memory => "-",
        }
    }

    /// The numbers this case reports, in the order every system returns them.
    pub fn metrics(self, p: &Params) -> Vec<Metric> {
        let mib = p.pipe_bytes >> 20;
        match self {
            Case::GuestToHost => vec![m(format!("guest→host SEND {MSG} B"), "MB/s", true)],
            Case::HostToGuest => vec![
                m(
                    format!("host→guest POLL/RECEIVE {MSG} B (limit: streaming)"),
                    "MB/s",
                    true,
                ),
                m(
                    format!("host→guest POLL/RECEIVE {MSG} B (limit: lock-step)"),
                    "MB/s",
                    true,
                ),
            ],
            Case::RoundTrip => vec![
                m(format!("round trip {RTT_MSG} B, p50"), "µs", false),
                m(format!("round trip {RTT_MSG} B, p99"), "µs", false),
            ],
            Case::PipeRead => vec![m(
                format!("pipe host→guest (READ_PIPE) {mib} MiB"),
                "MB/s",
                true,
            )],
            Case::PipeWrite => vec![m(
                format!("pipe guest→host (WRITE {PIPE_CHUNK} B) {mib} MiB"),
                "MB/s",
                true,
            )],
            Case::FdPipeToGuest => vec![m("fd: pipe host→guest (RECEIVE)".into(), "msg/s", true)],
            Case::FdPipeToHost => vec![m(
                "fd: pipe guest→host (SEND READ_PIPE)".into(),
                "msg/s",
                true,
            )],
            Case::FdMemfd => vec![m(
                "fd: memfd host→guest, mapped by the guest".into(),
                "msg/s",
                true,
            )],
            Case::BulkToGuest => {
                let mib = p.bulk_bytes >> 20;
                vec![
                    m(
                        format!("bulk host→guest stream (RECEIVE) {mib} MiB, 4 KiB ring"),
                        "MB/s",
                        true,
                    ),
                    m(
                        format!("bulk host→guest stream (RECEIVE) {mib} MiB, 1 MiB ring"),
                        "MB/s",
                        true,
                    ),
                    m(
                        format!("bulk host→guest pipe (READ) {mib} MiB, 4 KiB ring"),
                        "MB/s",
                        true,
                    ),
                    m(
                        format!("bulk host→guest pipe (READ) {mib} MiB, 1 MiB ring"),
                        "MB/s",
                        true,
                    ),
                ]
            }
            Case::BulkToHost => {
                let mib = p.bulk_bytes >> 20;
                let k = BULK_MSG >> 10;
                vec![
                    m(
                        format!("bulk guest→host stream (SEND) {mib} MiB, {MSG} B SENDs"),
                        "MB/s",
                        true,
                    ),
                    m(
                        format!("bulk guest→host stream (SEND) {mib} MiB, {k} KiB SENDs"),
                        "MB/s",
                        true,
                    ),
                    m(
                        format!("bulk guest→host pipe (WRITE) {mib} MiB, {PIPE_CHUNK} B WRITEs"),
                        "MB/s",
                        true,
                    ),
                    m(
                        format!("bulk guest→host pipe (WRITE) {mib} MiB, {k} KiB WRITEs"),
                        "MB/s",
                        true,
                    ),
                ]
            }
            Case::Memory => vec![
                m("RSS idle (VMM connected)".into(), "MiB", false),
                m(format!("RSS with {RSS_CONTEXTS} contexts"), "MiB", false),
                m("  of which anonymous (RssAnon)".into(), "MiB", false),
                m("memory per context".into(), "KiB", false),
            ],
        }
    }
}

/// What one repetition of one case on one system produced.
pub struct Outcome {
    /// One value per metric; `Err` = not measurable there, with the reason.
    pub values: Vec<Result<f64, String>>,
    /// Operations performed (for CPU time per operation); 0 = not applicable.
    pub ops: u64,
    /// Diagnostics per operation (e.g. kicks and interrupts), by name.
    pub extra: Vec<(&'static str, f64)>,
    /// Costs over the traffic, for systems with a device process (ours, relay); the others
    /// are measured by the bench around the whole repetition.
    pub costs: Option<SpanCosts>,
    /// Allocations of the guest driver's thread in the case's loop (not its set-up).
    pub driver_allocs: Option<u64>,
}

impl Outcome {
    pub fn new(values: Vec<f64>, ops: usize) -> Self {
        Outcome {
            values: values.into_iter().map(Ok).collect(),
            ops: ops as u64,
            extra: Vec::new(),
            costs: None,
            driver_allocs: None,
        }
    }

    /// Records the driver thread's allocations in the loop.
    pub fn allocs(mut self, n: u64) -> Self {
        self.driver_allocs = Some(n);
        self
    }
}

/// Result of one repetition: an outcome, or why the whole case could not run.
pub type RepResult = Result<Outcome, String>;
