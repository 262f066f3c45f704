//! [`ConfigError`]: every way the configuration can be rejected. Each message starts with the
//! flag and the value as the user gave them, so that the user finds what to change; `main`
//! prints it as the one line of a fatal error (exit status 2).

use cross_domain_protocol::channel::channel_name_list;

use super::{
    ChannelsFileError, ReservedReason, ShmSizeProblem, MAX_SCANOUTS, MAX_SOCKET_PATH,
    WAYLAND_SOCK_FLAG,
};
use crate::cross_domain::FdPolicyError;
use crate::inherited::FdError;

/// A rejected configuration. Each message starts with the flag and the value as given, e.g.
/// `--channel '2:/a': channel type 2 is given twice`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--channel` without a `:`.
    #[error("{flag} '{value}': expected TYPE:PATH, for example 2:/run/portal.sock")]
    MissingSeparator { flag: &'static str, value: String },

    /// `--channel :PATH`.
    #[error("{flag} '{value}': the channel type before ':' is missing")]
    EmptyChannelType { flag: &'static str, value: String },

    /// A TYPE that is neither a number nor a known name.
    #[error(
        "{flag} '{value}': unknown channel type '{type_text}' (expected a number, 0x-hex, or one of {})",
        channel_name_list()
    )]
    UnknownChannelType {
        flag: &'static str,
        value: String,
        type_text: String,
    },

    /// A numeric TYPE above 0xFFFFFFFF.
    #[error("{flag} '{value}': channel type '{type_text}' does not fit in 32 bits")]
    ChannelTypeOutOfRange {
        flag: &'static str,
        value: String,
        type_text: String,
    },

    /// TYPE 0 or 0xFFFFFFFF.
    #[error("{flag} '{value}': {reason}")]
    ReservedChannelType {
        flag: &'static str,
        value: String,
        channel_type: u32,
        reason: ReservedReason,
    },

    /// An empty PATH (`--channel 2:`, `--wayland-sock ''`, `--socket-path ''`).
    #[error("{flag} '{value}': the socket path is empty")]
    EmptyPath { flag: &'static str, value: String },

    /// A PATH longer than a Unix socket address can hold.
    #[error("{flag} '{value}': the socket path is longer than {MAX_SOCKET_PATH} bytes, the limit of a Unix socket address")]
    PathTooLong { flag: &'static str, value: String },

    /// The same channel type twice, by number, by name or through `--wayland-sock`.
    #[error(
        "{flag} '{value}': channel type {channel_type} is given twice{}",
        duplicate_hint(flag)
    )]
    DuplicateChannel {
        flag: &'static str,
        value: String,
        channel_type: u32,
    },

    /// `--channel TYPE:PATH,OPTION` with an option other than `fds=`.
    #[error(
        "{flag} '{value}': unknown channel option '{option}' (the options are fds=LIST and \
         ring=SIZE; a path that contains ',' can only be given with --channel)"
    )]
    UnknownChannelOption {
        flag: &'static str,
        value: String,
        option: String,
    },

    /// `--channel TYPE:PATH,fds=A,fds=B`.
    #[error("{flag} '{value}': the option '{option}' is given twice")]
    RepeatedChannelOption {
        flag: &'static str,
        value: String,
        option: &'static str,
    },

    /// `--channel TYPE:PATH,fds=LIST` with a LIST that is not a policy.
    #[error("{flag} '{value}': {reason}")]
    InvalidFds {
        flag: &'static str,
        value: String,
        reason: FdPolicyError,
    },

    /// `--channel TYPE:PATH,ring=SIZE` with a SIZE that is not one, or out of bounds.
    #[error("{flag} '{value}': {reason}")]
    InvalidRing {
        flag: &'static str,
        value: String,
        reason: String,
    },

    /// `--wayland-sock PATH,name=NAME` with a name.
    #[error(
        "{flag} '{value}': a named socket (name={name}) belongs to crosvm's virtio-wl device; \
         this device connects only the unnamed Wayland socket, as channel 1: drop \
         ',name={name}', or connect another service with --channel TYPE:PATH"
    )]
    NamedWaylandSock {
        flag: &'static str,
        value: String,
        name: String,
    },

    /// `--wayland-sock PATH,OPTION` with an option other than `name=`.
    #[error(
        "{flag} '{value}': unknown option '{option}' (crosvm's form is PATH[,name=NAME]; a \
         path that contains ',' can be given as --channel 1:PATH)"
    )]
    WaylandSockOption {
        flag: &'static str,
        value: String,
        option: String,
    },

    /// `--scanouts` not a number in 0..=16.
    #[error("{flag} '{value}': expected a number from 0 to {MAX_SCANOUTS}")]
    InvalidScanouts { flag: &'static str, value: String },

    /// `--fd` not a decimal number.
    #[error("{flag} '{value}': expected a file descriptor number, for example 3")]
    InvalidFd { flag: &'static str, value: String },

    /// `--fd N` that is not an open, connected Unix stream socket.
    #[error("{flag} '{value}': {reason}")]
    UnusableFd {
        flag: &'static str,
        value: String,
        reason: FdError,
    },

    /// `--shm-size` not a non-zero, page-aligned byte count.
    #[error("{flag} '{value}': {reason}")]
    InvalidShmSize {
        flag: &'static str,
        value: String,
        reason: ShmSizeProblem,
    },

    /// `--max-mappings` is not a number in range.
    #[error("{flag} '{value}': expected a number from 1 to {max}")]
    InvalidMaxMappings {
        flag: &'static str,
        value: String,
        max: usize,
    },

    /// `--partial-pages` is not one of its modes.
    #[error(
        "{flag} '{value}': expected 'refuse' (the default), 'map' (the VMM maps a file's last \
         page past its end: crosvm, libkrun), 'udmabuf' (share through the host's \
         /dev/udmabuf: QEMU) or 'auto' (udmabuf when /dev/udmabuf opens, refuse otherwise)"
    )]
    InvalidPartialPages { flag: &'static str, value: String },

    /// `--partial-pages udmabuf`, but `/dev/udmabuf` cannot be opened.
    #[error("{flag} '{value}': {reason} (is CONFIG_UDMABUF set, and may this user open it?)")]
    UdmabufUnavailable {
        flag: &'static str,
        value: String,
        reason: String,
    },

    /// `--sandbox` neither `on` nor `none`.
    #[error("{flag} '{value}': expected 'on' (the default) or 'none' (no sandbox, for debugging)")]
    InvalidSandbox { flag: &'static str, value: String },

    /// `--seccomp` neither `kill` nor `log`.
    #[error(
        "{flag} '{value}': expected 'kill' (the default) or 'log' (log calls outside the \
         allow-list instead of killing the daemon)"
    )]
    InvalidSeccomp { flag: &'static str, value: String },

    /// `--socket-group` names no group.
    #[error("{flag} '{value}': no such group")]
    UnknownGroup { flag: &'static str, value: String },

    /// `--socket-group` where the daemon does not create the socket.
    #[error(
        "{flag} '{value}': only with --socket-path, where the daemon creates the socket; with \
         {other} the socket exists already{hint}"
    )]
    SocketGroupWithoutPath {
        flag: &'static str,
        value: String,
        other: &'static str,
        hint: &'static str,
    },

    /// `--channels-file ''`.
    #[error("{flag} '{value}': the file name is empty")]
    EmptyFileName { flag: &'static str, value: String },

    /// The channels file cannot be read, or has an error at start-up.
    #[error("{flag} {error}")]
    ChannelsFile {
        flag: &'static str,
        error: ChannelsFileError,
    },

    /// `--log-level` not one of the five levels.
    #[error("{flag} '{value}': expected one of error, warn, info, debug, trace")]
    InvalidLogLevel { flag: &'static str, value: String },

    /// The socket-activation variables are malformed or pass something the daemon cannot serve.
    #[error("socket activation: {reason}")]
    Activation { reason: String },

    /// No way to reach the VMM was given.
    #[error(
        "no vhost-user socket given: pass --socket-path PATH or --fd N, or start the daemon \
         through socket activation (LISTEN_FDS)"
    )]
    NoListenSocket,

    /// More than one way to reach the VMM was given.
    #[error(
        "{first} and {second} both give the vhost-user socket: use exactly one of \
         --socket-path, --fd and socket activation"
    )]
    ListenConflict {
        first: &'static str,
        second: &'static str,
    },
}

impl ConfigError {
    /// The same error, reported against `flag` with the whole argument `value`.
    pub(super) fn in_argument(mut self, new_flag: &'static str, new_value: &str) -> Self {
        match &mut self {
            Self::MissingSeparator { flag, value }
            | Self::EmptyChannelType { flag, value }
            | Self::UnknownChannelType { flag, value, .. }
            | Self::ChannelTypeOutOfRange { flag, value, .. }
            | Self::ReservedChannelType { flag, value, .. }
            | Self::EmptyPath { flag, value }
            | Self::PathTooLong { flag, value }
            | Self::DuplicateChannel { flag, value, .. }
            | Self::InvalidScanouts { flag, value }
            | Self::InvalidFd { flag, value }
            | Self::UnusableFd { flag, value, .. }
            | Self::InvalidShmSize { flag, value, .. }
            | Self::InvalidSandbox { flag, value }
            | Self::InvalidMaxMappings { flag, value, .. }
            | Self::InvalidPartialPages { flag, value }
            | Self::UdmabufUnavailable { flag, value, .. }
            | Self::InvalidSeccomp { flag, value }
            | Self::InvalidLogLevel { flag, value }
            | Self::EmptyFileName { flag, value }
            | Self::UnknownGroup { flag, value }
            | Self::UnknownChannelOption { flag, value, .. }
            | Self::RepeatedChannelOption { flag, value, .. }
            | Self::InvalidFds { flag, value, .. }
            | Self::InvalidRing { flag, value, .. }
            | Self::NamedWaylandSock { flag, value, .. }
            | Self::WaylandSockOption { flag, value, .. }
            | Self::SocketGroupWithoutPath { flag, value, .. } => {
                *flag = new_flag;
                new_value.clone_into(value);
            }
            Self::Activation { .. }
            | Self::ChannelsFile { .. }
            | Self::NoListenSocket
            | Self::ListenConflict { .. } => {}
        }
        self
    }
}

fn duplicate_hint(flag: &str) -> &'static str {
    if flag == WAYLAND_SOCK_FLAG {
        " (--wayland-sock PATH is the same as --channel 1:PATH)"
    } else {
        ""
    }
}
