//! `postgrest`: a PostgREST v11 test double. Same config syntax, signals, JWT checks and health
//! endpoints as the real thing, but it never connects to a database (tests have none).
//!
//! Usage: `postgrest <config-file>` | `postgrest --dump-config <config-file>` | `--help` | `--version`

mod config;
mod dburi;
mod http;
mod jwt;

use config::Config;
use http::{Request, Response};
use serde_json::json;
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;
use std::net::TcpListener;
use std::process::exit;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// The PostgREST version whose behaviour the double copies (and the production image ships).
const VERSION: &str = "11.2.2";

const USAGE: &str = "\
PostgREST test double (no database)

Usage:
  postgrest <config-file>                run: API on server-port, /live and /ready on admin-server-port
  postgrest --dump-config <config-file>  parse the file as at start-up, print it as JSON
  postgrest --help | --version

Signals: SIGUSR2 reloads the config file, SIGUSR1 'reloads the schema cache',
SIGTERM/SIGINT exit 0. SIGHUP is not handled (its default action kills the process),
exactly like real PostgREST.";

/// The config in force; a reload swaps the whole `Arc`, so a request sees one consistent config.
type Shared = Arc<RwLock<Arc<Config>>>;

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

/// Prints PostgREST-style log lines: `28/Nov/2025:03:14:00 +0000: message`.
fn log(message: &str) {
    println!("{}: {message}", timestamp(SystemTime::now()));
}

fn timestamp(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil algorithm, to avoid a date crate for one log prefix.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
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

fn run(path: &str) {
    // First of all: until a handler is installed, SIGUSR1/SIGUSR2 would kill us. SIGHUP is
    // deliberately left alone, as in real PostgREST (no handler since v6).
    let mut signals = Signals::new([SIGUSR1, SIGUSR2, SIGTERM, SIGINT]).unwrap_or_else(|e| {
        eprintln!("cannot install signal handlers: {e}");
        exit(1)
    });
    let config = match config::load(path) {
        Ok((config, _)) => config,
        Err(e) => {
            eprintln!("Failed to load config file {path}: {e}");
            exit(1);
        }
    };
    log(&format!(
        "Starting PostgREST {VERSION} (test double, never connects to {})...",
        config.db_uri
    ));
    let shared: Shared = Arc::new(RwLock::new(Arc::new(config.clone())));

    if let Some(port) = config.admin_server_port {
        let listener = bind(&config.server_host, port);
        http::spawn_server(listener, "admin", Arc::new(admin));
        log(&format!("Admin server listening on port {port}"));
    }
    let listener = bind(&config.server_host, config.server_port);
    let state = shared.clone();
    http::spawn_server(
        listener,
        "api",
        Arc::new(move |r: &Request| api(r, &current(&state))),
    );
    log(&format!("Listening on port {}", config.server_port));
    // Real PostgREST logs these once its first connection and schema load succeed.
    log("Config reloaded");
    log("Schema cache loaded");

    for signal in signals.forever() {
        match signal {
            SIGUSR2 => reload(path, &shared),
            // No database, so no schema cache to reload; say so in PostgREST's words.
            SIGUSR1 => log("Schema cache loaded"),
            _ => exit(0),
        }
    }
}

fn current(shared: &Shared) -> Arc<Config> {
    shared.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// SIGUSR2: re-read the whole file; apply only the reloadable keys; keep the old config on error.
fn reload(path: &str, shared: &Shared) {
    match config::load(path) {
        Ok((new, _)) => {
            let merged = current(shared).reloaded(new);
            *shared.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(merged);
            log("Config reloaded");
        }
        Err(e) => log(&format!("Failed reloading config: {e}")),
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

/// The admin server: the double has no database, so it is ready as soon as its config is loaded.
fn admin(request: &Request) -> Response {
    match (request.method.as_str(), request.path.as_str()) {
        ("GET" | "HEAD", "/live" | "/ready") => Response::empty(200),
        _ => Response::empty(404),
    }
}

/// PostgREST's error body.
fn error(status: u16, code: &str, message: &str) -> Response {
    Response::json(
        status,
        &json!({"code": code, "details": null, "hint": null, "message": message}),
    )
}

fn api(request: &Request, config: &Config) -> Response {
    if !matches!(request.method.as_str(), "GET" | "HEAD") || request.path != "/" {
        return error(404, "PGRST125", "Invalid path specified in request URL");
    }
    let token = request.header("Authorization").and_then(|h| {
        let (scheme, token) = h.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    let mut role = config.db_anon_role.clone();
    if let Some(token) = token {
        let Some(secret) = &config.jwt_secret else {
            return error(500, "PGRST300", "Server lacks JWT secret");
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        match jwt::verify(token, secret.as_bytes(), config.jwt_aud.as_deref(), now) {
            Ok(claims) => {
                if let Some(r) = claims.get("role").and_then(|r| r.as_str()) {
                    role = Some(r.to_string());
                }
            }
            Err(e) => {
                let message = e.message();
                let mut response = error(401, "PGRST301", &message);
                let description = message.replace('\\', "\\\\").replace('"', "\\\"");
                response.headers.push((
                    "WWW-Authenticate",
                    format!("Bearer error=\"invalid_token\", error_description=\"{description}\""),
                ));
                return response;
            }
        }
    }
    Response::json(
        200,
        &json!({
            "swagger": "2.0",
            "info": {"title": "PostgREST test double", "version": VERSION},
            "basePath": "/",
            "schemes": ["http"],
            "paths": {},
            "role": role,
            "schemas": config.db_schemas.split(',').map(str::trim).collect::<Vec<_>>(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::tests::{mint, SECRET};

    fn config() -> Config {
        let text = format!(
            "jwt-secret = \"{SECRET}\"\njwt-aud = \"authenticated\"\ndb-anon-role = \"anon\"\ndb-schemas = \"public, storage\""
        );
        Config::from_bindings(&config::parse(&text, &|_| None).unwrap()).unwrap()
    }

    fn get(path: &str, auth: Option<String>) -> Response {
        let mut headers = Vec::new();
        if let Some(a) = auth {
            headers.push(("authorization".to_string(), a));
        }
        let request = Request {
            method: "GET".into(),
            path: path.into(),
            headers,
        };
        api(&request, &config())
    }

    fn body(r: &Response) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn root_without_token_is_the_anonymous_role() {
        let r = get("/", None);
        assert_eq!(r.status, 200);
        assert_eq!(body(&r)["role"], "anon");
        assert_eq!(body(&r)["schemas"], json!(["public", "storage"]));
    }

    #[test]
    fn root_with_tokens() {
        let good = mint(
            SECRET,
            &json!({"role": "authenticated", "aud": "authenticated"}),
        );
        let r = get("/", Some(format!("Bearer {good}")));
        assert_eq!(
            (r.status, body(&r)["role"].clone()),
            (200, json!("authenticated"))
        );

        let wrong = mint("ffffffffffffffffffffffffffffffff", &json!({}));
        let r = get("/", Some(format!("Bearer {wrong}")));
        assert_eq!(r.status, 401);
        assert_eq!(
            body(&r),
            json!({"code": "PGRST301", "details": null, "hint": null, "message": "JWSError JWSInvalidSignature"})
        );
        let www = r.headers.iter().find(|(k, _)| *k == "WWW-Authenticate");
        assert!(www.unwrap().1.starts_with("Bearer error=\"invalid_token\""));

        let aud = mint(SECRET, &json!({"aud": "someone-else"}));
        let r = get("/", Some(format!("bearer {aud}")));
        assert_eq!(body(&r)["message"], "JWT not in audience");
    }

    #[test]
    fn other_paths_are_404_and_admin_answers_health() {
        assert_eq!(get("/nope", None).status, 404);
        let req = |path: &str| Request {
            method: "GET".into(),
            path: path.into(),
            headers: vec![],
        };
        assert_eq!(admin(&req("/live")).status, 200);
        assert_eq!(admin(&req("/ready")).status, 200);
        assert_eq!(admin(&req("/")).status, 404);
    }

    #[test]
    fn log_timestamps() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_709_164_800 + 3_723);
        assert_eq!(timestamp(t), "29/Feb/2024:01:02:03 +0000");
        assert_eq!(timestamp(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
    }
}
