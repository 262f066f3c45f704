//! Unit tests of the listen-socket choice.

use std::path::Path;

use super::*;

#[test]
fn exactly_one_listen() {
    let path = || Listen::Path("/run/g.sock".into());
    let e = select_listen(Vec::new()).unwrap_err();
    assert!(matches!(e, ConfigError::NoListenSocket));
    assert_eq!(
        e.to_string(),
        "no vhost-user socket given: pass --socket-path PATH or --fd N, or start the daemon \
         through socket activation (LISTEN_FDS)"
    );
    match select_listen(vec![("--socket-path", path())]).unwrap() {
        Listen::Path(p) => assert_eq!(p, Path::new("/run/g.sock")),
        other => panic!("{other:?}"),
    }
    let e =
        select_listen(vec![("--socket-path", path()), (ACTIVATION_SOURCE, path())]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--socket-path and socket activation (LISTEN_FDS) both give the vhost-user socket: \
         use exactly one of --socket-path, --fd and socket activation"
    );
    assert_eq!(path().to_string(), "/run/g.sock");
}
