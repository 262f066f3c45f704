//! Command line of `vhost-user-cross-domain`: parses the flags ([`cli::Args`]), the channels
//! file and the socket-activation environment into a [`Config`], answers `--print-capabilities`, sets up
//! logging ([`logging`]) and hands over to the library. All device behaviour lives in the
//! library; this file only maps outcomes to exit codes: 0 clean stop, 1 runtime failure, 2
//! invalid configuration (clap's own usage errors also exit with 2). Every failure is reported
//! by [`logging::fatal`], which no log filter silences.

use std::error::Error as StdError;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use log::warn;
use vhost_user_cross_domain::cli::{self, Args};
use vhost_user_cross_domain::config::{
    describe_activated, resolve_partial_pages, select_listen, unusable_fd, ConfigError, Listen,
    LiveChannels, SandboxMode, SocketGroup, ACTIVATION_SOURCE, CHANNELS_FILE_FLAG,
};
use vhost_user_cross_domain::inherited::{self, FdError, SocketKind};
use vhost_user_cross_domain::reload::read_channels_file;
use vhost_user_cross_domain::{logging, socket_path, systemd, Config};

/// Exit status for a failure after the configuration was accepted.
const EXIT_RUNTIME_FAILURE: u8 = 1;
/// Exit status for a rejected configuration (the same clap uses for usage errors).
const EXIT_BAD_CONFIG: u8 = 2;

/// The `--print-capabilities` answer (QEMU's vhost-user.json schema). The schema's only GPU
/// features are "render-node" and "virgl"; this device has neither a render node nor a virgl
/// renderer (it offers the VIRGL feature bit only because Linux requires it before a context
/// can be created), so the list is empty.
const CAPABILITIES: &str = "{\n  \"type\": \"gpu\",\n  \"features\": []\n}";

fn main() -> ExitCode {
    // The backend-program convention: --print-capabilities answers whatever else is given.
    if wants_capabilities(std::env::args_os().skip(1)) {
        println!("{CAPABILITIES}");
        return ExitCode::SUCCESS;
    }
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => match cli::config_error(&e) {
            Some(ours) => return bad_config(ours),
            // clap's own usage errors (status 2), with priority prefixes under the journal.
            None if e.use_stderr() && logging::to_journal() => {
                logging::usage_error(&e.render().to_string());
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
            // Exits with 2 on a usage error, 0 for --help and --version.
            None => e.exit(),
        },
    };
    logging::init(args.log_level);

    let config = match config_from_args(&args) {
        Ok(config) => config,
        Err(e) => return bad_config(&e),
    };
    logging::log_startup(&config);
    if config.sandbox == SandboxMode::None && args.seccomp.is_some() {
        warn!("--seccomp has no effect with --sandbox none");
    }

    match vhost_user_cross_domain::run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        // The path is checked only when the daemon creates the socket, but it is part of the
        // configuration all the same.
        Err(vhost_user_cross_domain::Error::SocketPath(e)) => {
            logging::fatal(e);
            ExitCode::from(EXIT_BAD_CONFIG)
        }
        Err(e) => {
            logging::fatal(error_chain(&e));
            ExitCode::from(EXIT_RUNTIME_FAILURE)
        }
    }
}

/// Reports a rejected configuration: one line naming the flag and the value, exit status 2.
fn bad_config(e: &ConfigError) -> ExitCode {
    logging::fatal(e);
    ExitCode::from(EXIT_BAD_CONFIG)
}

/// True if `--print-capabilities` is among the arguments (before a `--`).
fn wants_capabilities(args: impl Iterator<Item = OsString>) -> bool {
    args.take_while(|a| a != "--")
        .any(|a| a == "--print-capabilities")
}

fn config_from_args(args: &Args) -> Result<Config, ConfigError> {
    let listen = listen_from_args(args)?;
    let socket_group = match &args.socket_group {
        Some(name) => Some(socket_group(args, name, &listen)?),
        None => None,
    };
    let channel_sources = args.channel_sources()?;
    let channels = match channel_sources.file() {
        None => channel_sources.flags().clone(),
        Some(file) => read_channels_file(file)
            .and_then(|text| channel_sources.table(&text, |_| Ok(())))
            .map_err(|error| ConfigError::ChannelsFile {
                flag: CHANNELS_FILE_FLAG,
                error,
            })?,
    };
    Ok(Config {
        listen,
        channels: LiveChannels::new(channels),
        channel_sources,
        num_scanouts: args.scanouts,
        shm_size: args.shm_size,
        sandbox: args.sandbox,
        seccomp: args.seccomp.unwrap_or_default(),
        socket_group,
        max_mappings: args.max_mappings,
        partial_pages: resolve_partial_pages(args.partial_pages)?,
    })
}

/// `--socket-group NAME`: only where the daemon creates the socket itself.
fn socket_group(args: &Args, name: &str, listen: &Listen) -> Result<SocketGroup, ConfigError> {
    if let Listen::Path(_) = listen {
        return socket_path::lookup_group(name);
    }
    let (other, hint) = if args.fd.is_some() {
        ("--fd", "")
    } else {
        (
            "socket activation",
            " (set SocketGroup= and SocketMode= in the socket unit)",
        )
    };
    Err(ConfigError::SocketGroupWithoutPath {
        flag: "--socket-group",
        value: name.to_owned(),
        other,
        hint,
    })
}

/// Exactly one of `--socket-path`, `--fd` and socket activation.
fn listen_from_args(args: &Args) -> Result<Listen, ConfigError> {
    let mut candidates = Vec::new();
    if let Some(path) = &args.socket_path {
        candidates.push(("--socket-path", Listen::Path(path.clone())));
    }
    if let Some(fd) = args.fd {
        match inherited::inspect(fd) {
            Ok(SocketKind::Connected) => {}
            Ok(SocketKind::Listening) => return Err(unusable_fd(fd, FdError::Listening)),
            Err(e) => return Err(unusable_fd(fd, e)),
        }
        // SAFETY: `fd` is open (just inspected) and was handed to the daemon by number on the
        // command line; nothing in this process owns it, and this is the only place that takes
        // it.
        let owned = unsafe { inherited::take(fd) };
        candidates.push((
            "--fd",
            Listen::Connected {
                fd: Arc::new(owned),
                origin: format!("--fd {fd}"),
            },
        ));
    }
    match systemd::activation() {
        Ok(None) => {}
        Ok(Some(activation)) => candidates.push((ACTIVATION_SOURCE, activated(activation)?)),
        // Variables that are not meant for this process (an inherited environment) must not
        // stop a daemon given its socket on the command line.
        Err(e) if !candidates.is_empty() => warn!("ignoring the socket-activation variables: {e}"),
        Err(e) => {
            return Err(ConfigError::Activation {
                reason: e.to_string(),
            })
        }
    }
    select_listen(candidates)
}

/// The socket passed by socket activation: a listening one (`Accept=no`, the normal case) or
/// one connection (`Accept=yes`).
fn activated(activation: systemd::Activation) -> Result<Listen, ConfigError> {
    let systemd::Activation { fd, name } = activation;
    let kind = inherited::inspect(fd).map_err(|e| ConfigError::Activation {
        reason: format!("fd {fd} ('{name}') is {e}"),
    })?;
    // SAFETY: the service manager passed `fd` (checked open just now) to this process for the
    // daemon's use; nothing else in the process owns it, and this is the only place that takes
    // it.
    let owned = Arc::new(unsafe { inherited::take(fd) });
    // Logs name the socket by its path: LISTEN_FDNAMES is often unset ("unknown").
    let address = inherited::local_address(owned.as_fd());
    Ok(match kind {
        SocketKind::Listening => Listen::Listener {
            fd: owned,
            name,
            address,
        },
        SocketKind::Connected => Listen::Connected {
            fd: owned,
            origin: format!(
                "socket activation (fd {fd}, {})",
                describe_activated(address.as_deref(), &name)
            ),
        },
    })
}

/// The error's message followed by those of its sources that it does not already contain.
fn error_chain(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
