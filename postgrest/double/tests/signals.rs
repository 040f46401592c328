//! Start-up and signals, without a database (the db-uri names a host that does not resolve, as
//! in the manager's integration tests): the double installs its signal handlers when PostgREST
//! v11.2.2 does, so an early SIGUSR2 kills it; the image's wrapper holds such a signal back until
//! `/live` answers, then delivers it.

mod common;

use common::*;
use serde_json::json;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

const NO_DB: &str = "postgres://p1_authenticator:pw@pgbouncer.invalid:6432/p1";
const SIGUSR2: i32 = 12;

/// Before PostgREST installs its handlers (here: while it is still reading its config, which is
/// a FIFO nobody writes yet) SIGUSR2 has its default action: the process dies of it.
#[test]
fn an_early_sigusr2_kills_the_double_like_postgrest() {
    let dir = TempDir::new("early");
    let fifo = dir.path("postgrest.conf");
    mkfifo(&fifo);
    let mut cmd = Command::new(binary());
    cmd.arg(&fifo);
    let mut p = Proc::spawn(cmd);
    signal(p.child.id(), "USR2");
    let status = p.wait_exit(Duration::from_secs(10));
    assert_eq!(status.signal(), Some(SIGUSR2), "{status:?}: {}", p.log());
}

/// Once `/live` answers, the handlers are in place: SIGUSR2 reloads (a new JWT secret takes
/// effect) and the process lives on. Without a database: `/ready` 503, a good token 503
/// PGRST002 with Retry-After, a bad one 401.
#[test]
fn after_live_sigusr2_reloads_and_no_database_means_503() {
    let dir = TempDir::new("reload");
    let conf = dir.path("postgrest.conf");
    let (port, admin) = (free_port(), free_port());
    std::fs::write(&conf, config_text(NO_DB, port, admin, SECRET, "")).unwrap();
    let mut cmd = Command::new(binary());
    cmd.arg(&conf);
    let mut p = Proc::spawn(cmd);
    wait_until("/live", Duration::from_secs(10), || {
        (status(admin, "/live", None)? == 200).then_some(())
    });
    assert_eq!(status(admin, "/ready", None), Some(503));

    let old = token(
        SECRET,
        json!({"role": "authenticated", "aud": "authenticated"}),
    );
    let new = token(OTHER_SECRET, json!({"role": "authenticated"}));
    let r = get(port, "/", Some(&old)).unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"code": "PGRST002", "details": null, "hint": null,
            "message": "Could not query the database for the schema cache. Retrying."})
    );
    assert!(r.headers.contains("Retry-After: "), "{}", r.headers);
    assert_eq!(status(port, "/", None), Some(503));
    assert_eq!(status(port, "/", Some(&new)), Some(401));

    std::fs::write(&conf, config_text(NO_DB, port, admin, OTHER_SECRET, "")).unwrap();
    signal(p.child.id(), "USR2");
    wait_until("the new secret", Duration::from_secs(10), || {
        (status(port, "/", Some(&new))? == 503).then_some(())
    });
    assert_eq!(status(port, "/", Some(&old)), Some(401));
    assert!(p.alive());
    p.wait_log("Config reloaded", Duration::from_secs(20));
    assert!(
        p.log()
            .contains("could not translate host name \\\"pgbouncer.invalid\\\""),
        "{}",
        p.log()
    );
    assert!(!p.log().contains(":pw@"), "the password must not be logged");

    // A bad file keeps the old config; SIGUSR1 does not kill either.
    std::fs::write(&conf, "jwt-secret = \"bad \\q\"\n").unwrap();
    signal(p.child.id(), "USR2");
    p.wait_log("Failed reloading config: line 1", Duration::from_secs(5));
    signal(p.child.id(), "USR1");
    assert_eq!(status(port, "/", Some(&new)), Some(503));
    assert!(p.alive());

    signal(p.child.id(), "TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(5)).code(), Some(0));
}

/// The image's PID 1 wrapper (postgrest/docker-entrypoint.sh, run here by the host's sh) holds
/// a SIGUSR2 that arrives while PostgREST is still starting, and delivers it once `/live`
/// answers: PostgREST survives and re-reads its config.
#[test]
fn the_wrapper_holds_an_early_reload_until_live() {
    let dir = TempDir::new("wrapper");
    let fifo = dir.path("postgrest.conf");
    mkfifo(&fifo);
    let pidfile = dir.path("postgrest.pid");
    let (port, admin) = (free_port(), free_port());
    let bin_dir = std::path::Path::new(binary()).parent().unwrap();
    let wrapper = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-entrypoint.sh");
    let mut cmd = Command::new("sh");
    cmd.arg(wrapper)
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .env("PGRST_CONFIG", &fifo)
        .env("PGRST_PIDFILE", &pidfile)
        .env("ADMIN_PORT", admin.to_string());
    let mut w = Proc::spawn(cmd);
    // The pid file is written after the traps are set (as PID 1 in a container, a signal
    // before that is dropped by the kernel; here it would kill the test's sh).
    wait_until("the pid file", Duration::from_secs(10), || {
        std::fs::read_to_string(&pidfile).ok()
    });

    // PostgREST is blocked reading its config: no handlers yet. The wrapper must hold this.
    signal(w.child.id(), "USR2");
    w.wait_log("SIGUSR2 held", Duration::from_secs(20));
    feed_fifo(&fifo, config_text(NO_DB, port, admin, SECRET, ""))
        .join()
        .unwrap();
    // PostgREST has read its config to the end (it answers /live) before the second writer
    // opens the FIFO. Without this wait the second writer could open the FIFO while the first
    // read was still going: a reader sees EOF only once no writer holds the pipe, so it would
    // read both configs as one, and the reload would then wait for a writer that never comes.
    w.wait_log("delivering held SIGUSR2", Duration::from_secs(20));
    // The held reload re-opens the config: this write completes only when it does.
    let second = feed_fifo(&fifo, config_text(NO_DB, port, admin, OTHER_SECRET, ""));
    wait_until(
        "the reload to read the FIFO",
        Duration::from_secs(15),
        || second.is_finished().then_some(()),
    );
    w.wait_log("Config reloaded", Duration::from_secs(20));
    let new = token(OTHER_SECRET, json!({"role": "authenticated"}));
    assert_eq!(status(port, "/", Some(&new)), Some(503)); // the new secret: past the JWT check
    assert_eq!(status(admin, "/live", None), Some(200));
    assert!(w.alive(), "{}", w.log());

    // Now signals go straight through; TERM ends both with PostgREST's status.
    signal(w.child.id(), "TERM");
    assert_eq!(
        w.wait_exit(Duration::from_secs(10)).code(),
        Some(0),
        "{}",
        w.log()
    );
    assert!(!pidfile.exists());
}
