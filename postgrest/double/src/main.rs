//! `postgrest`: a PostgREST v11.2.2 test double. Same config syntax, signals, JWT checks and
//! health endpoints as the real thing; it logs in to the database of `db-uri` like PostgREST
//! (retrying while unreachable, exiting on an authentication failure) and serves `GET /` and
//! `GET /<table>`. See README.md for what it does not do.
//!
//! Usage: `postgrest <config-file>` | `postgrest --dump-config <config-file>` | `--help` | `--version`

use postgrest_double::app::App;
use postgrest_double::http::{self, Request};
use postgrest_double::{config, log, VERSION};
use serde_json::json;
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;
use std::net::TcpListener;
use std::process::exit;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const USAGE: &str = "\
PostgREST 11.2.2 test double

Usage:
  postgrest <config-file>                run: API on server-port, /live and /ready on admin-server-port
  postgrest --dump-config <config-file>  parse the file as at start-up, print it as JSON
  postgrest --help | --version

Database: logs in with db-uri (simple query protocol, no TLS; SCRAM-SHA-256, md5 or
cleartext password). Unreachable: retries with backoff (1 s doubling, capped at 4 s;
PostgREST caps at 32 s), /live 200 and /ready 503. A libpq-style 'password
authentication failed' or 'no password supplied': logs the error and exits 1, as
PostgREST does; anything else (PgBouncer's 'SASL authentication failed', a missing
database) is retried, as PostgREST does. A %00 in db-uri is refused at start.

API: GET/HEAD / (Swagger 2.0: the tables and views of the first db-schemas schema, or
Accept-Profile's, that the role may use) and GET/HEAD /<table> (all columns, at most
max-rows rows); query parameters, other methods, /rpc, embedding are not supported.
Each request: one read-only transaction as the JWT's role claim or db-anon-role, with
request.jwt.claims set. Never connected: 503 PGRST002, as PostgREST.

Signals, installed when PostgREST v11.2.2 installs them (after the config is read and
the connection worker started, before any port listens; until then SIGUSR1/SIGUSR2
kill the process): SIGUSR2 re-reads the config file, SIGUSR1 reloads the schema cache
and flushes the pool, SIGTERM/SIGINT exit 0 (PostgREST re-raises SIGINT instead).
SIGHUP is not handled (its default action kills the process), exactly like PostgREST.
db-channel-enabled is accepted but the double never LISTENs: it behaves as false.";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["--help" | "-h"] => println!("{USAGE}"),
        ["--version" | "-v"] => println!("PostgREST {VERSION} (test double)"),
        ["--dump-config", path] => dump_config(path),
        [path] if !path.starts_with('-') => run(path),
        _ => {
            eprintln!("{USAGE}");
            exit(1);
        }
    }
}

fn dump_config(path: &str) {
    match config::load(path) {
        Ok((config, bindings)) => {
            let keys: serde_json::Map<_, _> = bindings
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect();
            let doc = json!({"config": keys, "db_uri": config.db_uri.to_json()});
            println!("{doc:#}");
        }
        Err(e) => {
            eprintln!("{e}");
            exit(1);
        }
    }
}

/// Start-up in PostgREST v11.2.2's order (`CLI.main`, then `App.run`):
/// 1. read the config (a bad file exits 1);
/// 2. `AppState.init` (the pool; no connection yet);
/// 3. `connectionWorker`: a thread that logs "Starting PostgREST...", connects and loads the
///    schema cache;
/// 4. `installSignalHandlers` (`Unix.hs`): only from here on do SIGUSR1/SIGUSR2 not kill;
/// 5. `runListener` (LISTEN, when db-channel-enabled): the double never listens;
/// 6. `Admin.runAdmin`, then the API server ("Listening on port ...").
fn run(path: &str) {
    let config = match config::load(path) {
        Ok((config, _)) => config,
        Err(e) => {
            eprintln!("Failed to load config file {path}: {e}");
            exit(1);
        }
    };
    let app = Arc::new(App::new(path, config.clone()));
    app.connection_worker();
    let mut signals = Signals::new([SIGUSR1, SIGUSR2, SIGTERM, SIGINT]).unwrap_or_else(|e| {
        eprintln!("cannot install signal handlers: {e}");
        exit(1)
    });

    if let Some(port) = config.admin_server_port {
        let listener = bind(&config.server_host, port);
        log(&format!("Admin server listening on port {port}"));
        let state = app.clone();
        http::spawn_server(
            listener,
            "admin",
            Arc::new(move |r: &Request| state.admin(r)),
        );
    }
    let listener = bind(&config.server_host, config.server_port);
    log(&format!("Listening on port {}", config.server_port));
    let state = app.clone();
    http::spawn_server(listener, "api", Arc::new(move |r: &Request| state.api(r)));
    app.api_listening.store(true, Ordering::Relaxed);

    for signal in signals.forever() {
        match signal {
            SIGUSR2 => app.reload_config(),
            SIGUSR1 => app.connection_worker(),
            _ => exit(0),
        }
    }
}

/// PostgREST's `server-host` special values: `!4`/`*4` any IPv4, `*`/`!6`/`*6` any address.
fn bind(host: &str, port: u16) -> TcpListener {
    let host = match host {
        "!4" | "*4" => "0.0.0.0",
        "*" | "!6" | "*6" => "::",
        other => other,
    };
    TcpListener::bind((host, port)).unwrap_or_else(|e| {
        eprintln!("cannot listen on {host} port {port}: {e}");
        exit(1)
    })
}
