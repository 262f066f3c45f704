//! Unit tests of the channels file's syntax and of how it combines with the flags.

use std::path::Path;

use super::*;

fn sources(flags: &[&str]) -> ChannelSources {
    let mut t = ChannelTable::new();
    for s in flags {
        t.add_channel_arg(s).unwrap();
    }
    ChannelSources::new(t).with_file("/etc/vucd/vm1.channels".into())
}

fn any(_: &Path) -> Result<(), String> {
    Ok(())
}

fn error(s: &ChannelSources, text: &str) -> String {
    s.table(text.as_bytes(), any).unwrap_err().to_string()
}

#[test]
fn lines_comments_and_blanks() {
    let s = sources(&["1:/w"]);
    let text =
        "# comment\n\n  2:/run/portal.sock  \n\t# indented comment\r\nx11:/tmp/.X11-unix/X0\r\n";
    let t = s.table(text.as_bytes(), any).unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(t.get(1), Some(Path::new("/w")));
    assert_eq!(t.get(2), Some(Path::new("/run/portal.sock")));
    assert_eq!(t.get(0x11), Some(Path::new("/tmp/.X11-unix/X0")));
    // An empty file, or no file text at all, leaves the flags' channels.
    assert_eq!(s.table(b"", any).unwrap().len(), 1);
    assert_eq!(s.table(b"\n# only comments\n", any).unwrap().len(), 1);
    // The path keeps its colons, as with --channel.
    let t = s.table(b"2:/a:b", any).unwrap();
    assert_eq!(t.get(2), Some(Path::new("/a:b")));
}

#[test]
fn errors_name_the_file_and_the_line() {
    let s = sources(&[]);
    assert_eq!(
        error(&s, "2:/a\n\nfoo:/b\n"),
        "/etc/vucd/vm1.channels:3: 'foo:/b': unknown channel type 'foo' (expected a number, \
         0x-hex, or one of wayland, camera, pipewire, x11, dbus-session, dbus-system)"
    );
    assert_eq!(
        error(&s, "/run/portal.sock"),
        "/etc/vucd/vm1.channels:1: '/run/portal.sock': expected TYPE:PATH, for example \
         2:/run/portal.sock"
    );
    assert_eq!(
        error(&s, "0:/x"),
        "/etc/vucd/vm1.channels:1: '0:/x': channel type 0 is reserved: it means 'no channel' \
         (a query-only context)"
    );
    assert_eq!(
        error(&s, "2:"),
        "/etc/vucd/vm1.channels:1: '2:': the socket path is empty"
    );
    let long = format!("2:/{}", "a".repeat(200));
    assert!(
        error(&s, &long).contains("longer than 107 bytes"),
        "{}",
        error(&s, &long)
    );
    let e = s.table(b"# ok\n2:/\xff\n", any).unwrap_err();
    assert_eq!(e.line, Some(2));
    assert_eq!(e.to_string(), "/etc/vucd/vm1.channels:2: not valid UTF-8");
}

#[test]
fn options_give_the_fd_policy_and_nothing_else() {
    let s = sources(&[]);
    let t = s
        .table(b"2:/a,fds=memory+pipe\n0x12:/b,fds=none\n3:/c\n", any)
        .unwrap();
    assert_eq!(t.get(2), Some(Path::new("/a")));
    assert_eq!(t.policy(2).to_string(), "memory+pipe");
    assert_eq!(t.policy(0x12), crate::cross_domain::FdPolicy::NONE);
    assert_eq!(t.policy(3), crate::cross_domain::FdPolicy::default_for(3));
    assert_eq!(
        error(&s, "2:/a,fds=memfd"),
        "/etc/vucd/vm1.channels:1: '2:/a,fds=memfd': unknown fd kind 'memfd' (expected memory, \
         pipe, eventfd, socket, or none alone)"
    );
    assert_eq!(
        error(&s, "2:/a,fds=none,fds=pipe"),
        "/etc/vucd/vm1.channels:1: '2:/a,fds=none,fds=pipe': the option 'fds=' is given twice"
    );
    assert_eq!(
        error(&s, "2:/a,x"),
        "/etc/vucd/vm1.channels:1: '2:/a,x': unknown channel option 'x' (the options are \
         fds=LIST and ring=SIZE; a path that contains ',' can only be given with --channel)"
    );
    assert!(error(&s, "2:/a,fds=pipe,x").contains("unknown channel option 'x'"));
    assert!(error(&s, "2:/a,").contains("unknown channel option ''"));
    // The channel part is checked first.
    assert!(error(&s, "bogus:/a,x").contains("unknown channel type 'bogus'"));
}

#[test]
fn each_type_once() {
    let s = sources(&["wayland:/w"]);
    assert_eq!(
        error(&s, "2:/a\n0x2:/b\n"),
        "/etc/vucd/vm1.channels:2: '0x2:/b': channel type 2 is already given on line 1"
    );
    assert_eq!(
        error(&s, "# x\n1:/other\n"),
        "/etc/vucd/vm1.channels:2: '1:/other': channel type 1 is already given by --channel \
         '1:/w' (give each type either on the command line or in the file)"
    );
    let mut s = s;
    s.set_flag_arg(1, "--wayland-sock '/w'".to_owned());
    assert!(error(&s, "wayland:/x").contains("already given by --wayland-sock '/w'"));
}

#[test]
fn the_callers_rule_applies_to_every_path() {
    let s = sources(&["1:/allowed/w"]);
    let rule = |p: &Path| {
        if p.starts_with("/allowed") {
            Ok(())
        } else {
            Err(format!("{} is not allowed", p.display()))
        }
    };
    assert_eq!(s.table(b"2:/allowed/x", rule).unwrap().len(), 2);
    let e = s
        .table(b"2:/allowed/x\n3:/elsewhere/y\n", rule)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/vucd/vm1.channels:2: '3:/elsewhere/y': /elsewhere/y is not allowed"
    );
}

#[test]
fn size_limit() {
    let s = sources(&[]);
    let mut text = vec![b'#'; MAX_CHANNELS_FILE];
    assert!(s.table(&text, any).is_ok());
    text.push(b'\n');
    let e = s.table(&text, any).unwrap_err();
    assert_eq!(e.line, None);
    assert_eq!(
        e.to_string(),
        "/etc/vucd/vm1.channels: larger than 65536 bytes, the most a channels file may be"
    );
}
