//! The Docker runtime against the real daemon, where the fake cannot stand in: how the loop
//! reads a container's log around a signal.

mod support;

use futures_util::StreamExt;
use postgrest_manager::runtime::docker::DockerRuntime;
use postgrest_manager::runtime::Runtime;
use tokio::net::{TcpListener, UnixStream};

use support::*;

/// A reload counts only once PostgREST says so after the signal, so a log cursor taken just
/// before a signal must leave out every line already written, even one a moment old, and let
/// through what the signal brings. On a daemon that shares our clock the cursor is our clock
/// (no call); on one reached over TCP it is the stamp of the log's last line. Both are checked,
/// each twice in a row: the second time, the line the first signal brought is the one that
/// must be left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_cursor_leaves_out_what_was_written_before_it_on_either_clock() {
    let env = TestEnv::bare();
    let name = format!("{}-talker", env.instance);
    // Says which signal it got: a stand-in for PostgREST's `Config reloaded`.
    let script = "trap 'echo got-usr1' USR1; trap 'echo got-usr2' USR2; echo started; \
                  while :; do sleep 1 & wait $!; done";
    let id = docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &format!("{LABEL_INSTANCE}={}", env.instance),
        CLIENT_IMAGE,
        "sh",
        "-c",
        script,
    ]);
    wait_until("the container's first line", || {
        let out = docker(&["logs", &id]);
        String::from_utf8_lossy(&out.stdout)
            .contains("started")
            .then_some(())
    });

    let local = DockerRuntime::new(None);
    local.ping().await.expect("the daemon answers");
    assert!(
        local.shares_clock(),
        "the machine's daemon, on its Unix socket, keeps our clock"
    );
    let over_tcp = over_tcp().await;
    over_tcp.ping().await.expect("the daemon answers over TCP");
    assert!(!over_tcp.shares_clock(), "a daemon over TCP is asked");

    for (runtime, how) in [(&local, "our clock"), (&over_tcp, "the daemon's stamp")] {
        for signal in ["SIGUSR2", "SIGUSR1"] {
            let cursor = runtime.log_cursor(&id).await.expect("a cursor");
            runtime.signal(&id, signal).await.expect("signalled");
            let mut lines = runtime.log_after(&id, cursor);
            let first = tokio::time::timeout(TIMEOUT, lines.next())
                .await
                .unwrap_or_else(|_| panic!("{how}: nothing after the cursor within {TIMEOUT:?}"))
                .expect("the container still runs")
                .expect("the log reads");
            let expected = format!("got-{}", signal.trim_start_matches("SIG").to_lowercase());
            assert_eq!(first, expected, "{how}: the first line after the cursor");
        }
    }
}

/// A daemon reached over TCP: a forwarder on loopback to the tests' Docker socket, for as long
/// as the test's tokio runtime runs.
async fn over_tcp() -> DockerRuntime {
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|host| host.strip_prefix("unix://").map(str::to_owned))
        .unwrap_or_else(|| "/var/run/docker.sock".into());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let socket = socket.clone();
            tokio::spawn(async move {
                if let Ok(mut daemon) = UnixStream::connect(&socket).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut daemon).await;
                }
            });
        }
    });
    DockerRuntime::new(Some(&format!("tcp://127.0.0.1:{port}")))
}
