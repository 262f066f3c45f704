//! Unit tests of the channel table and the `TYPE:PATH` parsers.

use super::*;
use crate::config::*;

fn table(specs: &[&str]) -> Result<ChannelTable, ConfigError> {
    let mut t = ChannelTable::new();
    for s in specs {
        t.add_channel_arg(s)?;
    }
    Ok(t)
}

#[test]
fn socket_path_length() {
    let ok = format!("2:/{}", "a".repeat(MAX_SOCKET_PATH - 1));
    assert!(table(&[&ok]).is_ok());
    let long = format!("2:/{}", "a".repeat(MAX_SOCKET_PATH));
    let e = table(&[&long]).unwrap_err();
    assert!(matches!(e, ConfigError::PathTooLong { .. }), "{e:?}");
    assert!(e.to_string().starts_with("--channel '2:/aaa"), "{e}");
}

#[test]
fn decimal_types() {
    assert_eq!(parse_channel_type("1").unwrap(), 1);
    assert_eq!(parse_channel_type("2").unwrap(), 2);
    assert_eq!(parse_channel_type("007").unwrap(), 7);
    assert_eq!(parse_channel_type("4294967294").unwrap(), 0xFFFF_FFFE);
}

#[test]
fn hex_types() {
    assert_eq!(parse_channel_type("0x10").unwrap(), 0x10);
    assert_eq!(parse_channel_type("0X11").unwrap(), 0x11);
    assert_eq!(parse_channel_type("0xaB").unwrap(), 0xab);
    assert_eq!(parse_channel_type("0xFFFFFFFE").unwrap(), 0xFFFF_FFFE);
}

#[test]
fn names_in_any_case() {
    for &(name, t) in CHANNEL_NAMES {
        assert_eq!(parse_channel_type(name).unwrap(), t);
        assert_eq!(parse_channel_type(&name.to_uppercase()).unwrap(), t);
    }
    assert_eq!(parse_channel_type("Wayland").unwrap(), 1);
    assert_eq!(parse_channel_type("DBus-Session").unwrap(), 0x12);
}

#[test]
fn channel_names() {
    assert_eq!(channel_name(1), Some("wayland"));
    assert_eq!(channel_name(0x13), Some("dbus-system"));
    assert_eq!(channel_name(3), None);
}

#[test]
fn unknown_types() {
    for s in [
        "foo",
        "-1",
        "+1",
        " 1",
        "1 ",
        "0x",
        "0xg",
        "0x+1",
        "1_000",
        "wayland0",
        "dbus_session",
    ] {
        let e = parse_channel_type(s).unwrap_err();
        assert!(
            matches!(e, ConfigError::UnknownChannelType { .. }),
            "{s}: {e:?}"
        );
    }
    let e = parse_channel_spec("foo:/x").unwrap_err();
    assert_eq!(
        e.to_string(),
        "--channel 'foo:/x': unknown channel type 'foo' (expected a number, 0x-hex, or one of \
         wayland, camera, pipewire, x11, dbus-session, dbus-system)"
    );
}

#[test]
fn overflowing_types() {
    for s in ["4294967296", "0x100000000", "99999999999999999999999"] {
        let e = parse_channel_type(s).unwrap_err();
        assert!(
            matches!(e, ConfigError::ChannelTypeOutOfRange { .. }),
            "{s}: {e:?}"
        );
    }
    let e = parse_channel_spec("4294967296:/x").unwrap_err();
    assert_eq!(
        e.to_string(),
        "--channel '4294967296:/x': channel type '4294967296' does not fit in 32 bits"
    );
}

#[test]
fn reserved_types() {
    for s in ["0", "0x0", "00", "4294967295", "0xFFFFFFFF", "0xffffffff"] {
        let e = parse_channel_type(s).unwrap_err();
        assert!(
            matches!(e, ConfigError::ReservedChannelType { .. }),
            "{s}: {e:?}"
        );
    }
    let e = parse_channel_spec("0:/x").unwrap_err();
    assert_eq!(
        e.to_string(),
        "--channel '0:/x': channel type 0 is reserved: it means 'no channel' (a query-only \
         context)"
    );
    let e = parse_channel_spec("0xFFFFFFFF:/x").unwrap_err();
    assert_eq!(
        e.to_string(),
        "--channel '0xFFFFFFFF:/x': channel type 0xffffffff is reserved for internal \
         sockets, never a host path"
    );
    let mut t = ChannelTable::new();
    assert!(matches!(
        t.insert(0, "/x".into()),
        Err(ConfigError::ReservedChannelType {
            channel_type: 0,
            ..
        })
    ));
    assert!(matches!(
        t.insert(u32::MAX, "/x".into()),
        Err(ConfigError::ReservedChannelType { .. })
    ));
    assert!(t.is_empty());
}

#[test]
fn specs() {
    assert_eq!(
        parse_channel_spec("2:/run/portal.sock").unwrap(),
        (2, "/run/portal.sock".into())
    );
    assert_eq!(
        parse_channel_spec("wayland:/run/user/1000/wayland-0")
            .unwrap()
            .0,
        1
    );
    assert_eq!(
        parse_channel_spec("0x10:rel/pw").unwrap(),
        (0x10, "rel/pw".into())
    );
    // Split at the first ':'; the path keeps the rest.
    assert_eq!(
        parse_channel_spec("2:/a:b:c").unwrap(),
        (2, "/a:b:c".into())
    );
}

#[test]
fn missing_separator() {
    for s in ["2", "/run/portal.sock", "wayland", ""] {
        let e = parse_channel_spec(s).unwrap_err();
        assert!(
            matches!(e, ConfigError::MissingSeparator { .. }),
            "{s}: {e:?}"
        );
    }
    assert_eq!(
        parse_channel_spec("2").unwrap_err().to_string(),
        "--channel '2': expected TYPE:PATH, for example 2:/run/portal.sock"
    );
}

#[test]
fn empty_type() {
    let e = parse_channel_spec(":/x").unwrap_err();
    assert!(matches!(e, ConfigError::EmptyChannelType { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "--channel ':/x': the channel type before ':' is missing"
    );
    assert!(matches!(
        parse_channel_type(""),
        Err(ConfigError::EmptyChannelType { .. })
    ));
}

#[test]
fn empty_path() {
    let e = parse_channel_spec("2:").unwrap_err();
    assert!(matches!(e, ConfigError::EmptyPath { .. }), "{e:?}");
    assert_eq!(e.to_string(), "--channel '2:': the socket path is empty");
    let mut t = ChannelTable::new();
    assert!(matches!(
        t.insert(2, PathBuf::new()),
        Err(ConfigError::EmptyPath { .. })
    ));
    let e = t.add_wayland_sock_arg(Path::new("")).unwrap_err();
    assert_eq!(e.to_string(), "--wayland-sock '': the socket path is empty");
    assert!(t.is_empty());
    let e = parse_socket_path(Path::new("")).unwrap_err();
    assert_eq!(e.to_string(), "--socket-path '': the socket path is empty");
    assert_eq!(
        parse_socket_path(Path::new("/tmp/g.sock")).unwrap(),
        Path::new("/tmp/g.sock")
    );
}

#[test]
fn duplicates() {
    let e = table(&["2:/a", "2:/b"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--channel '2:/b': channel type 2 is given twice"
    );
    // The same type through a name and a number, or through hex.
    let e = table(&["wayland:/a", "1:/b"]).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::DuplicateChannel {
                channel_type: 1,
                ..
            }
        ),
        "{e:?}"
    );
    let e = table(&["0x10:/a", "PipeWire:/b"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--channel 'PipeWire:/b': channel type 16 is given twice"
    );
    let e = table(&["16:/a", "0x10:/a"]).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::DuplicateChannel {
                channel_type: 16,
                ..
            }
        ),
        "{e:?}"
    );
    // --wayland-sock is --channel 1:PATH.
    let mut t = table(&["1:/a"]).unwrap();
    let e = t.add_wayland_sock_arg(Path::new("/w")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--wayland-sock '/w': channel type 1 is given twice (--wayland-sock PATH is the same \
         as --channel 1:PATH)"
    );
    let mut t = ChannelTable::new();
    t.add_wayland_sock_arg(Path::new("/w")).unwrap();
    let e = t.add_channel_arg("wayland:/a").unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::DuplicateChannel {
                channel_type: 1,
                ..
            }
        ),
        "{e:?}"
    );
    // The first mapping is kept.
    assert_eq!(t.get(1), Some(Path::new("/w")));
    assert_eq!(t.len(), 1);
    // Different types may share a path.
    assert_eq!(table(&["1:/a", "2:/a"]).unwrap().len(), 2);
}

#[test]
fn lookup_and_iteration() {
    let t = table(&["0x11:/x11", "wayland:/wl", "2:/portal"]).unwrap();
    assert_eq!(t.len(), 3);
    assert!(!t.is_empty());
    assert_eq!(t.get(1), Some(Path::new("/wl")));
    assert_eq!(t.get(2), Some(Path::new("/portal")));
    assert_eq!(t.get(0x11), Some(Path::new("/x11")));
    assert_eq!(t.get(3), None);
    let all: Vec<(u32, &Path)> = t.iter().collect();
    assert_eq!(
        all,
        [
            (1, Path::new("/wl")),
            (2, Path::new("/portal")),
            (0x11, Path::new("/x11"))
        ]
    );
    assert!(ChannelTable::new().is_empty());
    assert_eq!(ChannelTable::new().len(), 0);
}

#[test]
fn capset_mask_values() {
    assert_eq!(ChannelTable::new().capset_mask(), 0);
    assert_eq!(table(&["wayland:/a"]).unwrap().capset_mask(), 0x2);
    assert_eq!(table(&["camera:/a"]).unwrap().capset_mask(), 0x4);
    assert_eq!(table(&["pipewire:/a"]).unwrap().capset_mask(), 0x1_0000);
    assert_eq!(table(&["x11:/a"]).unwrap().capset_mask(), 0x2_0000);
    assert_eq!(table(&["dbus-session:/a"]).unwrap().capset_mask(), 0x4_0000);
    assert_eq!(table(&["dbus-system:/a"]).unwrap().capset_mask(), 0x8_0000);
    assert_eq!(table(&["31:/a"]).unwrap().capset_mask(), 0x8000_0000);
    assert_eq!(
        table(&["1:/a", "2:/b", "0x10:/c"]).unwrap().capset_mask(),
        0x1_0006
    );
}

#[test]
fn types_from_32_are_accepted_but_not_advertised() {
    let t = table(&["32:/a", "1:/w", "0xFFFFFFFE:/b", "31:/c"]).unwrap();
    assert_eq!(t.get(32), Some(Path::new("/a")));
    assert_eq!(t.get(0xFFFF_FFFE), Some(Path::new("/b")));
    assert_eq!(t.capset_mask(), 0x8000_0002);
    assert_eq!(t.unadvertised().collect::<Vec<_>>(), [32, 0xFFFF_FFFE]);
    assert_eq!(table(&["1:/w"]).unwrap().unadvertised().count(), 0);
}

#[test]
fn wayland_socks() {
    let ok = |s: &str| parse_wayland_sock(OsStr::new(s)).unwrap();
    assert_eq!(
        ok("/run/user/1000/wayland-0"),
        Path::new("/run/user/1000/wayland-0")
    );
    // crosvm's form, with its default (empty) name.
    assert_eq!(ok("/w,name="), Path::new("/w"));
    assert_eq!(ok("rel/w"), Path::new("rel/w"));
    let e = parse_wayland_sock(OsStr::new("/w,name=mojo")).unwrap_err();
    assert!(matches!(e, ConfigError::NamedWaylandSock { .. }), "{e:?}");
    assert!(
        e.to_string().starts_with(
            "--wayland-sock '/w,name=mojo': a named socket (name=mojo) belongs to crosvm's \
             virtio-wl device"
        ),
        "{e}"
    );
    for s in ["/w,mode=0", "/w,", "/a,b", "/w,name=,x"] {
        let e = parse_wayland_sock(OsStr::new(s)).unwrap_err();
        assert!(
            matches!(e, ConfigError::WaylandSockOption { .. }),
            "{s}: {e:?}"
        );
        assert!(e.to_string().contains("PATH[,name=NAME]"), "{e}");
    }
    for s in ["", ",name="] {
        let e = parse_wayland_sock(OsStr::new(s)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("--wayland-sock '{s}': the socket path is empty")
        );
    }
}

#[test]
fn fds_option_sets_the_channel_policy() {
    use crate::cross_domain::{FdClass, FdPolicy};
    let t = table(&[
        "2:/run/x.sock,fds=memory+pipe",
        "0x12:/bus,fds=none",
        "3:/a,b",
        "4:/c,d,fds=socket",
        "5:/e",
    ])
    .unwrap();
    assert_eq!(t.get(2), Some(Path::new("/run/x.sock")));
    assert_eq!(t.policy(2).to_string(), "memory+pipe");
    assert_eq!(t.policy(0x12), FdPolicy::NONE);
    // Without `,fds=` a ',' stays in the path, as it always did.
    assert_eq!(t.get(3), Some(Path::new("/a,b")));
    assert_eq!(t.policy(3), FdPolicy::default_for(3));
    assert_eq!(t.get(4), Some(Path::new("/c,d")));
    assert!(t.policy(4).allows(FdClass::Socket) && !t.policy(4).allows(FdClass::Memory));
    assert_eq!(t.policy(5), FdPolicy::default_for(5));
    // A type not in the table has its default.
    assert_eq!(t.policy(0x13), FdPolicy::default_for(0x13));
}

#[test]
fn fds_option_errors_name_the_whole_argument() {
    let err = |s: &str| table(&[s]).unwrap_err().to_string();
    assert_eq!(
        err("2:/run/x.sock,fds=memory+bogus"),
        "--channel '2:/run/x.sock,fds=memory+bogus': unknown fd kind 'bogus' (expected memory, \
         pipe, eventfd, socket, or none alone)"
    );
    assert_eq!(
        err("2:/a,fds=none,fds=none"),
        "--channel '2:/a,fds=none,fds=none': the option 'fds=' is given twice"
    );
    assert_eq!(
        err("2:/a,fds=pipe,mode=0"),
        "--channel '2:/a,fds=pipe,mode=0': unknown channel option 'mode=0' (the options are \
         fds=LIST and ring=SIZE; a path that contains ',' can only be given with --channel)"
    );
    assert_eq!(
        err("2:/a,fds="),
        "--channel '2:/a,fds=': the fd list is empty (use 'none' for a channel without fds)"
    );
    assert_eq!(
        err("2:,fds=none"),
        "--channel '2:,fds=none': the socket path is empty"
    );
    assert!(err("bogus:/a,fds=none")
        .starts_with("--channel 'bogus:/a,fds=none': unknown channel type 'bogus'"));
    assert!(err("0:/a,fds=none").starts_with("--channel '0:/a,fds=none': "));
    // A duplicate type names the argument with its option.
    let e = table(&["2:/a", "2:/b,fds=none"]).unwrap_err().to_string();
    assert!(
        e.starts_with("--channel '2:/b,fds=none': channel type 2 is given twice"),
        "{e}"
    );
}

#[test]
fn ring_option_sizes_and_errors() {
    let t = table(&[
        "2:/a,ring=64K",
        "3:/b,fds=pipe,ring=1M",
        "4:/c,ring=8192,fds=none",
    ])
    .unwrap();
    assert_eq!(t.get(3), Some(Path::new("/b")));
    assert_eq!(t.large_ring(2), Some(64 << 10));
    assert_eq!(t.large_ring(3), Some(1 << 20));
    assert_eq!(t.large_ring(4), Some(8192));
    assert_eq!(t.policy(4), FdPolicy::NONE);
    assert_eq!(t.large_ring_mask(), 0b1_1100);
    assert!(t.has_large_rings());
    let plain = table(&["2:/a", "5:/with,comma"]).unwrap();
    assert!(!plain.has_large_rings() && plain.large_ring(2).is_none());
    assert_eq!(plain.get(5), Some(Path::new("/with,comma")));
    let err = |s: &str| table(&[s]).unwrap_err().to_string();
    assert_eq!(
        err("2:/a,ring=2K"),
        "--channel '2:/a,ring=2K': ring size '2K' is outside 4096 bytes to 1M (the ring every \
         peer fills, and the most one message may take)"
    );
    assert!(err("2:/a,ring=2M").contains("outside 4096 bytes to 1M"));
    assert_eq!(
        err("2:/a,ring=big"),
        "--channel '2:/a,ring=big': ring size 'big' is not a number of bytes (or of K or M)"
    );
    assert_eq!(
        err("2:/a,ring=4K,ring=8K"),
        "--channel '2:/a,ring=4K,ring=8K': the option 'ring=' is given twice"
    );
}
