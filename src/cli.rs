//! The daemon's command line: the clap definition of every flag, with its help text, and the
//! typed values the flags parse into.
//!
//! This module owns [`Args`] and the glue between clap and our own parsers in
//! [`crate::config`]: each flag's value goes through one of them (`--channel` into a
//! [`ChannelSpec`], `--shm-size` into a byte count, `--fd` into a descriptor number, …) as a
//! clap value parser, so a value is parsed exactly once, and a rejected one is a
//! [`ConfigError`] naming the flag and the value. clap would print such an error in its own
//! words; [`config_error`] finds ours inside clap's so that `main` prints it unchanged.
//!
//! It must never act on what it parses (open, inspect or take a descriptor, touch the file
//! system): that is left to the caller, once, after parsing. The definition lives in the library
//! rather than in `main.rs` so that tools (a man page or completion generator) can read it
//! through [`clap::CommandFactory`].

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use clap::builder::{OsStringValueParser, TypedValueParser};
use clap::{ArgGroup, Parser};

use crate::config::{
    parse_channels_file, parse_fd, parse_max_mappings, parse_partial_pages, parse_sandbox,
    parse_scanouts, parse_seccomp, parse_shm_size, parse_socket_path, parse_wayland_sock,
    ChannelSources, ChannelSpec, ChannelTable, ConfigError, SandboxMode, SeccompMode,
    CHANNEL_NAMES, MAX_CHANNELS_FILE,
};
use crate::logging::{parse_log_level, LogLevel};

const ABOUT: &str =
    "vhost-user virtio-gpu device carrying cross-domain channels to host Unix sockets";

const LONG_ABOUT: &str = "\
vhost-user virtio-gpu device that offers only the cross-domain context type (capset 5).

A VMM (crosvm, QEMU) reaches the daemon through exactly one of: the vhost-user socket the
daemon creates at --socket-path, an already connected socket passed as --fd N, or a listening
socket passed by systemd socket activation. A guest program opens a cross-domain context and
names a numeric channel type; the daemon connects that context to the host Unix socket
configured for the type with --channel and carries bytes and file descriptors both ways. It
never looks inside the traffic: what a channel number means is agreed between the guest
program and the host service.";

/// The daemon's command-line flags, each parsed into its typed value.
// `--socket-path` and `--fd` form one group, so clap rejects both together; socket activation
// joins the choice when the caller builds the configuration.
#[derive(Debug, Parser)]
#[command(
    name = "vhost-user-cross-domain",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = "Run with --help for examples.",
    after_long_help = EXAMPLES,
    group(ArgGroup::new("listen").required(false).multiple(false).args(["socket_path", "fd"])),
)]
pub struct Args {
    /// Unix socket path on which to wait for the VMM's vhost-user connection.
    #[arg(
        long,
        value_name = "PATH",
        value_parser = socket_path_parser(),
        long_help = "\
Unix socket path on which to wait for the VMM's vhost-user connection. The daemon
creates the socket and the VMM connects to it as a client; when the VMM goes away,
the daemon waits for the next connection. Exactly one of --socket-path, --fd and
socket activation gives the socket. The directory must exist. The daemon first locks
PATH.lock, next to the socket, so a second daemon given the same path stops with
status 2 (\"already in use by another process\"). A stale socket at PATH (one nothing
accepts connections on, as a killed daemon leaves behind) is replaced; a socket that
a program accepts connections on, and anything that is not a socket, is left alone
and the daemon stops with status 2. The socket and its lock file are removed at
shutdown.
Example: --socket-path /run/vm1/gpu.sock"
    )]
    pub socket_path: Option<PathBuf>,

    /// Give the --socket-path socket to group GROUP, mode 0660.
    #[arg(
        long,
        value_name = "GROUP",
        long_help = "\
Give the socket the daemon creates at --socket-path to group GROUP (a name or a
number), with mode 0660, so that a VMM running as another user in that group can
connect. The daemon must run as root or as a member of the group. Only with
--socket-path: with --fd or socket activation the socket exists already (the socket
unit's SocketGroup= and SocketMode= set it there).
Example: --socket-group kvm"
    )]
    pub socket_group: Option<String>,

    /// Serve the vhost-user connection already open on file descriptor N, then exit.
    #[arg(
        long,
        value_name = "N",
        value_parser = parse_fd,
        // So that `--fd -1` reaches our parser, which names the flag, instead of looking like
        // an unknown option.
        allow_negative_numbers = true,
        long_help = "\
Serve the vhost-user connection already open on file descriptor N (a Unix stream
socket connected to the VMM, as libvirt passes it), for one session: the daemon exits
with status 0 when the VMM disconnects. A descriptor that is not open, not a Unix
stream socket, or a listening socket is rejected with status 2.
Example: --fd 3"
    )]
    pub fd: Option<RawFd>,

    /// Print the vhost-user capabilities as JSON and exit; other options are ignored.
    #[arg(
        long,
        long_help = "\
Print the vhost-user capabilities JSON object (QEMU's vhost-user.json schema) on
standard output and exit with status 0; every other option is ignored. The answer is
{\"type\": \"gpu\", \"features\": []}: the device has neither a render node nor a virgl
renderer."
    )]
    pub print_capabilities: bool,

    /// Connect channel type TYPE to the host Unix socket PATH (repeatable).
    #[arg(
        long = "channel",
        value_name = "TYPE:PATH",
        value_parser = ChannelSpec::parse,
        long_help = channel_long_help()
    )]
    pub channels: Vec<ChannelSpec>,

    /// Same as --channel 1:PATH (Wayland).
    #[arg(
        long,
        value_name = "PATH",
        value_parser = OsStringValueParser::new().try_map(|s| parse_wayland_sock(&s)),
        long_help = "\
Same as --channel 1:PATH, the Wayland channel; kept for command lines written for
crosvm's --wayland-sock. crosvm's form PATH[,name=NAME] is accepted without a name
(or with an empty one); named sockets belong to crosvm's virtio-wl device and are
refused. Giving both this flag and a --channel of type 1 is an error.
Example: --wayland-sock $XDG_RUNTIME_DIR/wayland-0"
    )]
    pub wayland_sock: Option<PathBuf>,

    /// Read channels from FILE too, one TYPE:PATH a line; re-read on SIGHUP.
    #[arg(
        long,
        value_name = "FILE",
        value_parser = OsStringValueParser::new().try_map(|s| parse_channels_file(Path::new(&s))),
        long_help = channels_file_long_help()
    )]
    pub channels_file: Option<PathBuf>,

    /// Number of scanouts (display outputs) the device reports, 0 to 16.
    #[arg(
        long,
        value_name = "N",
        default_value = "1",
        value_parser = parse_scanouts,
        allow_negative_numbers = true,
        long_help = "\
Number of scanouts (display outputs) the device reports, 0 to 16. The device never
shows anything; the scanouts exist because the guest driver asks for them. Linux 6.4
and newer accept 0 and then skip display setup; older kernels refuse a GPU with 0.
Example: --scanouts 0"
    )]
    pub scanouts: u32,

    /// Size of the host-visible shared memory region, in bytes (K, M, G suffixes).
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "8G",
        value_parser = parse_shm_size,
        allow_negative_numbers = true,
        long_help = "\
Size of the host-visible shared memory region the device offers the VMM, in bytes,
with an optional K, M or G suffix, also written KiB, MiB, GiB (binary units: 8G is
8 GiB). It must be a multiple of the host page size, from one page to 1024G (1 TiB).
The VMM reserves this much guest physical address space; nothing is allocated up
front.
Example: --shm-size 4G"
    )]
    pub shm_size: u64,

    /// Most blobs mapped in the host-visible region at once, 1 to 32764 (default 16384).
    #[arg(
        long,
        value_name = "N",
        default_value = "16384",
        value_parser = parse_max_mappings,
        allow_negative_numbers = true,
        long_help = "\
Most blobs the guest may have mapped in the host-visible region at once, 1 to 32764
(default 16384). A map beyond it gets an out-of-memory error response and one warning
per context. The bound stays below what the VMM can map: crosvm spends one KVM memory
slot per mapping (x86 KVM has 32764) and ends the VM when it has to refuse one.
Example: --max-mappings 4096"
    )]
    pub max_mappings: usize,

    /// What received memory that is not whole pages becomes: refuse (default), map, udmabuf
    /// or auto.
    #[arg(
        long,
        value_name = "MODE",
        default_value = "refuse",
        value_parser = parse_partial_pages,
        long_help = "\
What a memory file from a host service that is not a whole number of pages becomes
when the guest maps it (PipeWire's 2312-byte activation records are such files).
refuse (the default): grown to whole pages when it may grow, copied when a copy is
exact (write-sealed, or handed over read-only), otherwise refused with an error
response: QEMU refuses a mapping that runs past the end of a file, so the pages could
not be shared. map: the original file is mapped in whole pages, its last page running
past the end; only for VMMs that accept that (crosvm, libkrun), since a refused
mapping ends a crosvm VM. udmabuf: as refuse, but memory that cannot grow is shared
through a udmabuf over its pages (whole pages, so QEMU accepts it); /dev/udmabuf is
opened at start-up and must exist (CONFIG_UDMABUF), or the daemon exits with status 2.
auto: udmabuf when /dev/udmabuf opens at start-up, refuse otherwise.
See docs/pipewire.md.
Example: --partial-pages udmabuf"
    )]
    pub partial_pages: crate::config::PartialPagesMode,

    /// Confine the daemon after start-up: on (default), or none to debug.
    #[arg(
        long,
        value_name = "MODE",
        default_value = "on",
        value_parser = parse_sandbox,
        long_help = "\
Whether the daemon confines itself once its vhost-user socket is open: on (the
default) or none. On: a seccomp filter allows only the system calls the daemon
needs (see --seccomp); Landlock, where the kernel has it, denies all file-system
access except removing files in the directory of --socket-path (the socket, at
shutdown); no new privileges; every capability dropped (a daemon started as root
keeps uid 0 but loses CAP_DAC_OVERRIDE: run it as the user who owns the channel
sockets); and channel sockets are connected by a small broker process, by channel
type, so the daemon itself cannot connect to any socket. none: no confinement at
all, for debugging only.
Example: --sandbox none"
    )]
    pub sandbox: SandboxMode,

    /// What a system call outside the allow-list does: kill (default) or log.
    #[arg(
        long,
        value_name = "ACTION",
        value_parser = parse_seccomp,
        long_help = "\
What happens when the sandboxed daemon makes a system call outside its seccomp
allow-list: kill (the default; the kernel kills the process with SIGSYS) or log (the
kernel logs the call, audit type 1326 in dmesg or the audit log, and lets it run),
to find calls missing from the list. Ignored with --sandbox none.
Example: --seccomp log"
    )]
    pub seccomp: Option<SeccompMode>,

    /// Log level: error, warn, info (default), debug or trace; wins over RUST_LOG.
    #[arg(
        long,
        value_name = "LEVEL",
        value_parser = parse_log_level,
        long_help = "\
The least severe messages logged: error, warn, info (the default), debug or trace.
When given, it wins over RUST_LOG; without it, RUST_LOG is read as an env_logger
filter (for example RUST_LOG=vhost_user_cross_domain=debug), and without either the
level is info. Fatal errors are printed whatever the level.
Example: --log-level debug"
    )]
    pub log_level: Option<LogLevel>,
}

impl Args {
    /// The channel table `--channel` and `--wayland-sock` give, in command-line order of the
    /// `--channel` flags; the first error (a type given twice, a path too long) names its flag.
    pub fn channel_table(&self) -> Result<ChannelTable, ConfigError> {
        let mut channels = ChannelTable::new();
        for spec in &self.channels {
            channels.add_spec(spec)?;
        }
        if let Some(path) = &self.wayland_sock {
            channels.add_wayland_sock_arg(path)?;
        }
        Ok(channels)
    }

    /// Where the channel table comes from: [`Args::channel_table`], each channel named by the
    /// flag that gave it, and `--channels-file`.
    pub fn channel_sources(&self) -> Result<ChannelSources, ConfigError> {
        let mut sources = ChannelSources::new(self.channel_table()?);
        for spec in &self.channels {
            sources.set_flag_arg(spec.channel_type, format!("--channel '{}'", spec.arg));
        }
        if let Some(path) = &self.wayland_sock {
            sources.set_flag_arg(1, format!("--wayland-sock '{}'", path.display()));
        }
        Ok(match &self.channels_file {
            Some(file) => sources.with_file(file.clone()),
            None => sources,
        })
    }
}

/// Our error inside a clap error, if one of our value parsers rejected a value: `main` prints
/// it as it prints every other configuration error, instead of clap's
/// "invalid value 'V' for '--flag'" wrapping.
pub fn config_error(e: &clap::Error) -> Option<&ConfigError> {
    if e.kind() != clap::error::ErrorKind::ValueValidation {
        return None;
    }
    std::error::Error::source(e)?.downcast_ref::<ConfigError>()
}

/// `--socket-path` takes any bytes a path may hold (not only UTF-8), so its parser starts from
/// an `OsString` rather than a `&str`.
fn socket_path_parser() -> impl TypedValueParser<Value = PathBuf> {
    OsStringValueParser::new().try_map(|s| parse_socket_path(Path::new(&s)))
}

fn channel_long_help() -> String {
    let names: Vec<String> = CHANNEL_NAMES
        .iter()
        .map(|&(name, t)| match t {
            0..=9 => format!("{name} ({t})"),
            _ => format!("{name} ({t:#x})"),
        })
        .collect();
    // clap is built without line wrapping, so the text carries its own line breaks.
    let names: Vec<String> = names.chunks(3).map(|line| line.join(", ")).collect();
    format!(
        "\
Connect every cross-domain context whose guest program asks for channel type TYPE to
the host Unix socket PATH. The socket is connected when a guest asks, so the host
service may start after the daemon. Repeat the flag for several channels; each type
may be given once. TYPE is a decimal number, a 0x-prefixed hexadecimal number, or
one of these names:
  {}.
0 and 0xffffffff are reserved. Types from 32 up work, but the capset's 32-bit channel
mask cannot advertise them, so the guest program must know the number (the daemon
warns at start-up). A relative PATH, or one whose directory does not exist, also gets
a warning at start-up.
TYPE:PATH,fds=LIST says which kinds of file descriptor the channel carries, in both
directions: LIST is memory, pipe, eventfd and socket joined with '+' (fds=memory+pipe),
or none for a channel of bytes only. The default is memory+pipe+eventfd, and
memory+pipe+eventfd+socket on dbus-session and dbus-system (0x12, 0x13): sockets reach
the guest as identifier type 7, which only D-Bus guests are known to read. A host fd
the channel does not carry closes the guest's connection; a guest blob or read pipe
it does not carry fails that SEND.
TYPE:PATH,ring=SIZE offers large channel rings (a project extension, no other host has
it): a guest program that asks for them in INIT and attaches a channel ring larger
than 4096 bytes gets RECEIVE and READ messages that fill its ring, up to SIZE bytes
(4096 to 1M; a number of bytes, or with K or M), instead of at most 3744 and 4072
bytes; the capset's fifth word names these channels. Others (sommelier, muvm) never
ask and are never sent more. For bulk channels served by cross-domain-proxy.
The path ends at the first ',fds=' or ',ring='; another ',' stays in the path. The
start-up log shows each channel's fds and large rings.
Example: --channel 2:/run/portal.sock (a guest program that asks for channel 2
reaches the service listening on /run/portal.sock)",
        names.join(",\n  ")
    )
}

fn channels_file_long_help() -> String {
    format!(
        "\
Read channels from FILE as well as from --channel and --wayland-sock: one TYPE:PATH
a line, TYPE and PATH as in --channel. Blank lines and lines starting with # are
ignored, and blanks around a line are dropped. In the file a ',' ends the path and
per-channel options follow it, as in --channel (TYPE:PATH,fds=LIST,ring=SIZE), so a
path that contains ',' must be given with --channel. Each type may be given
once: in the file twice, or in the file and by a flag, is an error naming the line.
At most {MAX_CHANNELS_FILE} bytes.
On SIGHUP (systemctl reload) the daemon reads FILE again: contexts opened from then
on use the new table, contexts already open keep their connections. A file with an
error leaves the table as it was, and the error is logged with its line. A guest
reads the capset's channel mask when its driver starts, so a type added by a reload
is reached by guest programs that know its number, or after the guest restarts.
With the sandbox on, a reload may only name sockets beneath the directories of the
channel sockets configured at start-up (where the broker may connect); other paths
are refused with the rest of the reload, until the daemon restarts.
Example: --channels-file /etc/vhost-user-cross-domain/vm1.channels"
    )
}

const EXAMPLES: &str = "\
Examples:
  Serve Wayland and a portal service on channel 2 to one VM:
    vhost-user-cross-domain --socket-path /run/vm1/gpu.sock \\
        --channel wayland:$XDG_RUNTIME_DIR/wayland-0 --channel 2:/run/portal.sock

  Start crosvm against it:
    crosvm run --vhost-user gpu,socket=/run/vm1/gpu.sock ...

  QEMU 11 (only its generic vhost-user test device passes the needed GPU features on):
    qemu-system-x86_64 -m 4G -object memory-backend-memfd,id=mem,size=4G,share=on \\
        -machine q35,memory-backend=mem \\
        -chardev socket,id=gpu,path=/run/vm1/gpu.sock \\
        -device vhost-user-test-device-pci,chardev=gpu,virtio-id=16,num_vqs=2,config_size=24 ...

  Serve one connection that libvirt (or another manager) already opened, then exit:
    vhost-user-cross-domain --fd 3 --channel wayland:$XDG_RUNTIME_DIR/wayland-0

  Under systemd socket activation no socket option is given; the socket unit's socket
  arrives as fd 3 (LISTEN_FDS=1) and the daemon keeps accepting after each VMM:
    systemctl start vhost-user-cross-domain@vm1.socket

Environment: RUST_LOG selects the log level when --log-level is not given (default:
info), for example RUST_LOG=debug. When JOURNAL_STREAM names standard error (systemd
sets it), each log line starts with its syslog priority (<3> error ... <7> debug)
instead of a timestamp. LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES pass a
socket-activated socket; NOTIFY_SOCKET receives READY=1 once the daemon accepts
connections and STOPPING=1 on shutdown.
Signals: SIGTERM or SIGINT completes pending fences, closes the channels and exits 0.
SIGHUP re-reads --channels-file (without one it only logs that there is nothing to
reload). SIGUSR1 logs one line of counters per channel type (contexts, messages,
bytes and fds each way, hang-ups, errors).
Sandbox: on by default (seccomp, Landlock, no capabilities, a connection broker);
--sandbox none turns it off, --seccomp log logs calls outside the allow-list instead
of killing the daemon. See docs/security.md.
Exit status: 0 clean stop, 1 runtime failure (the sandbox could not be set up, among
others), 2 invalid command line or configuration.";

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("vhost-user-cross-domain").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn typed_values() {
        let a = parse(&[
            "--socket-path",
            "/run/vm1/gpu.sock",
            "--channel",
            "wayland:/w",
            "--channel",
            "0x10:/pw",
            "--scanouts",
            "0",
            "--shm-size",
            "4G",
            "--sandbox",
            "none",
            "--seccomp",
            "log",
        ])
        .unwrap();
        assert_eq!(
            a.socket_path.as_deref(),
            Some(Path::new("/run/vm1/gpu.sock"))
        );
        assert_eq!(a.fd, None);
        assert_eq!(a.channels.len(), 2);
        assert_eq!(a.channels[0].channel_type, 1);
        assert_eq!(a.channels[1].path, Path::new("/pw"));
        assert_eq!(a.scanouts, 0);
        assert_eq!(a.shm_size, 4 << 30);
        assert_eq!(a.sandbox, SandboxMode::None);
        assert_eq!(a.seccomp, Some(SeccompMode::Log));
        assert_eq!(a.channel_table().unwrap().capset_mask(), 0x1_0002);

        let a = parse(&["--fd", "3"]).unwrap();
        assert_eq!(a.fd, Some(3));
        assert_eq!(a.scanouts, 1);
        assert_eq!(a.shm_size, crate::config::DEFAULT_SHM_SIZE);
        assert_eq!(a.sandbox, SandboxMode::On);
        assert_eq!(a.seccomp, None);
    }

    #[test]
    fn our_errors_come_through_clap_unchanged() {
        for (args, message) in [
            (
                &["--channel", "2"][..],
                "--channel '2': expected TYPE:PATH, for example 2:/run/portal.sock",
            ),
            (
                &["--scanouts=-1"],
                "--scanouts '-1': expected a number from 0 to 16",
            ),
            (
                &["--fd", "x"],
                "--fd 'x': expected a file descriptor number, for example 3",
            ),
            // Negative numbers reach our parsers.
            (
                &["--scanouts", "-1"],
                "--scanouts '-1': expected a number from 0 to 16",
            ),
            (
                &["--fd", "-1"],
                "--fd '-1': expected a file descriptor number, for example 3",
            ),
            (
                &["--shm-size", "0"],
                "--shm-size '0': the size must not be zero",
            ),
            (
                &["--socket-path", ""],
                "--socket-path '': the socket path is empty",
            ),
        ] {
            let e = parse(args).unwrap_err();
            let ours = config_error(&e).unwrap_or_else(|| panic!("{args:?}: {e}"));
            assert_eq!(ours.to_string(), message);
        }
        // clap's own usage errors are left to clap.
        let e = parse(&["--bogus"]).unwrap_err();
        assert!(config_error(&e).is_none());
        let e = parse(&["--socket-path", "/a", "--fd", "3"]).unwrap_err();
        assert!(config_error(&e).is_none());
    }

    #[test]
    fn duplicates_are_found_when_the_table_is_built() {
        let a = parse(&["--channel", "2:/a", "--channel", "2:/b"]).unwrap();
        assert_eq!(
            a.channel_table().unwrap_err().to_string(),
            "--channel '2:/b': channel type 2 is given twice"
        );
        let e = parse(&["--wayland-sock", ""]).unwrap_err();
        assert_eq!(
            config_error(&e).unwrap().to_string(),
            "--wayland-sock '': the socket path is empty"
        );
        let a = parse(&["--wayland-sock", "/w,name="]).unwrap();
        assert_eq!(a.wayland_sock.as_deref(), Some(Path::new("/w")));
        let a = parse(&["--wayland-sock", "/w", "--channel", "wayland:/b"]).unwrap();
        assert_eq!(
            a.channel_table().unwrap_err().to_string(),
            "--wayland-sock '/w': channel type 1 is given twice (--wayland-sock PATH is the same \
             as --channel 1:PATH)"
        );
    }
}
