//! The double against a real PostgreSQL. Skipped (with the reason printed) unless
//! `PGRST_DOUBLE_TEST_DB_URI` names a superuser connection reachable with SCRAM (or md5,
//! cleartext) over TCP, e.g.
//!
//!     PGRST_DOUBLE_TEST_DB_URI=postgres://postgres:pw@172.17.0.2:5432/postgres \
//!         cargo test -p postgrest-double --test db -- --nocapture
//!
//! The test makes its own roles and database (names carry the pid) and drops them at the end.

mod common;

use common::*;
use postgrest_double::dburi::DbUri;
use postgrest_double::pg::{ident, Conn};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

const ENV: &str = "PGRST_DOUBLE_TEST_DB_URI";

fn superuser() -> Option<DbUri> {
    let Ok(uri) = std::env::var(ENV) else {
        eprintln!("SKIPPED: set {ENV}=postgres://<superuser>:<password>@<host>:<port>/<db> to run the double against a real PostgreSQL");
        return None;
    };
    Some(DbUri::parse(&uri).unwrap_or_else(|e| panic!("{ENV}: {e}")))
}

fn exec(uri: &DbUri, sql: &str) {
    let mut c = Conn::connect(uri, "double-test").unwrap_or_else(|e| panic!("{e:?}"));
    c.simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

/// Roles and a database for one test run, dropped on drop.
struct Fixture {
    admin: DbUri,
    db: String,
    auth: String,
    anon: String,
    user: String,
}

impl Fixture {
    fn new(admin: DbUri) -> Fixture {
        let tag = format!("dbl{}", std::process::id());
        let f = Fixture {
            db: format!("{tag}_db"),
            auth: format!("{tag}_authenticator"),
            anon: format!("{tag}_anon"),
            user: format!("{tag}_user"),
            admin,
        };
        f.drop_all();
        exec(
            &f.admin,
            &format!(
                "CREATE ROLE {auth} LOGIN NOINHERIT PASSWORD 'auth-pw'; \
                 CREATE ROLE {anon} NOLOGIN; CREATE ROLE {user} NOLOGIN; \
                 GRANT {anon}, {user} TO {auth}",
                auth = ident(&f.auth),
                anon = ident(&f.anon),
                user = ident(&f.user)
            ),
        );
        exec(&f.admin, &format!("CREATE DATABASE {}", ident(&f.db)));
        exec(
            &f.in_db(),
            &format!(
                "CREATE SCHEMA api; \
                 CREATE TABLE api.items (id int PRIMARY KEY, name text); \
                 INSERT INTO api.items SELECT i, 'item ' || i FROM generate_series(1, 5) i; \
                 CREATE TABLE api.secrets (x int); \
                 CREATE VIEW api.whoami AS SELECT current_user::text AS who, \
                   current_setting('request.jwt.claims', true)::json AS claims; \
                 GRANT USAGE ON SCHEMA api TO {anon}, {user}; \
                 GRANT SELECT ON api.items, api.whoami TO {user}; \
                 GRANT SELECT ON api.whoami TO {anon}",
                anon = ident(&f.anon),
                user = ident(&f.user)
            ),
        );
        f
    }

    fn in_db(&self) -> DbUri {
        DbUri {
            dbname: Some(self.db.clone()),
            ..self.admin.clone()
        }
    }

    /// The authenticator's URI through `host:port`.
    fn uri(&self, password: &str, host: &str, port: u16, db: &str) -> String {
        format!("postgres://{}:{password}@{host}:{port}/{db}", self.auth)
    }

    fn drop_all(&self) {
        let mut c = Conn::connect(&self.admin, "double-test").unwrap_or_else(|e| panic!("{e:?}"));
        let _ = c.simple_query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            ident(&self.db)
        ));
        for role in [&self.auth, &self.anon, &self.user] {
            let _ = c.simple_query(&format!("DROP ROLE IF EXISTS {}", ident(role)));
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.drop_all();
    }
}

/// A TCP forwarder that starts refusing (nothing listens on its port) and forwards to the
/// database once `open` is called: the database "appears".
struct LateProxy {
    port: u16,
    target: (String, u16),
}

impl LateProxy {
    fn new(target: (String, u16)) -> LateProxy {
        LateProxy {
            port: free_port(),
            target,
        }
    }

    fn open(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        let target = self.target.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect((target.0.as_str(), target.1)) else {
                    continue;
                };
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

fn start(conf: &std::path::Path) -> Proc {
    let mut cmd = Command::new(binary());
    cmd.arg(conf);
    Proc::spawn(cmd)
}

#[test]
fn against_a_real_postgresql() {
    let Some(admin) = superuser() else { return };
    let f = Fixture::new(admin);
    let host = f.admin.host.clone().unwrap();
    let db_port = f.admin.port.unwrap_or(5432);
    let dir = TempDir::new("db");
    let (port, adm) = (free_port(), free_port());
    let user_token = token(
        SECRET,
        json!({"role": f.user, "aud": "authenticated", "sub": "u-1"}),
    );
    let extra = format!(
        "db-schemas = \"api\"\ndb-anon-role = \"{}\"\nmax-rows = 3\ndb-pool = 2\ndb-prepared-statements = false\ndb-channel-enabled = false\n",
        f.anon
    );
    // The config's own db-anon-role line comes from config_text; ours (later) wins.

    // 1. The database is not there yet: retry, /live 200, /ready 503, requests 503.
    let proxy = LateProxy::new((host.clone(), db_port));
    let conf = dir.path("late.conf");
    let uri = f.uri("auth-pw", "127.0.0.1", proxy.port, &f.db);
    std::fs::write(&conf, config_text(&uri, port, adm, SECRET, &extra)).unwrap();
    let mut p = start(&conf);
    wait_until("/live", Duration::from_secs(10), || {
        (status(adm, "/live", None)? == 200).then_some(())
    });
    p.wait_log(
        "Attempting to reconnect to the database in 1 seconds...",
        Duration::from_secs(10),
    );
    assert_eq!(status(adm, "/ready", None), Some(503));
    let r = get(port, "/", Some(&user_token)).unwrap();
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (503, json!("PGRST002"))
    );
    assert!(p.log().contains("\"code\":\"PGRST000\""), "{}", p.log());
    assert!(p.log().contains("Connection refused"), "{}", p.log());
    proxy.open();
    wait_until(
        "/ready 200 once the database appears",
        Duration::from_secs(20),
        || (status(adm, "/ready", None)? == 200).then_some(()),
    );
    let log = p.log();
    for line in [
        "Connection successful",
        "Config reloaded",
        "Schema cache loaded",
    ] {
        assert!(log.contains(line), "{line}: {log}");
    }

    // 2. GET /: the tables the role may use, in the first schema.
    let r = get(port, "/", Some(&user_token)).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let doc = r.json();
    assert_eq!(doc["swagger"], "2.0");
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    assert_eq!(paths, ["/", "/items", "/whoami"], "{doc}");
    assert!(doc["definitions"]["items"]["properties"]["id"].is_object());
    let anon_doc = get(port, "/", None).unwrap().json();
    let paths: Vec<&String> = anon_doc["paths"].as_object().unwrap().keys().collect();
    assert_eq!(paths, ["/", "/whoami"]);

    // 3. GET /<table>: rows as JSON, max-rows, the role switch and the claims.
    let r = get(port, "/items", Some(&user_token)).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!([{"id": 1, "name": "item 1"}, {"id": 2, "name": "item 2"}, {"id": 3, "name": "item 3"}])
    );
    assert!(r.headers.contains("Content-Range: 0-2/*"), "{}", r.headers);
    let who = get(port, "/whoami", Some(&user_token)).unwrap().json();
    assert_eq!(who[0]["who"], json!(f.user));
    assert_eq!(who[0]["claims"]["sub"], "u-1");
    assert_eq!(who[0]["claims"]["role"], json!(f.user));
    let who = get(port, "/whoami", None).unwrap().json();
    assert_eq!(who[0]["who"], json!(f.anon));
    assert_eq!(who[0]["claims"], json!({"role": f.anon}));

    // 4. Permission errors: 401 for the anonymous role, 403 for another; unknown table 404.
    let r = get(port, "/items", None).unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"code": "42501", "details": null, "hint": null, "message": "permission denied for table items"})
    );
    assert!(
        r.headers.contains("WWW-Authenticate: Bearer"),
        "{}",
        r.headers
    );
    let r = get(port, "/secrets", Some(&user_token)).unwrap();
    assert_eq!((r.status, r.json()["code"].clone()), (403, json!("42501")));
    let r = get(port, "/nope", Some(&user_token)).unwrap();
    assert_eq!((r.status, r.json()["code"].clone()), (404, json!("42P01")));
    let bad = token(OTHER_SECRET, json!({"role": f.user}));
    assert_eq!(status(port, "/items", Some(&bad)), Some(401));

    // 5. SIGUSR2: max-rows from the file; SIGUSR1: a new table appears in GET /.
    let extra2 = extra.replace("max-rows = 3", "max-rows = 2");
    std::fs::write(&conf, config_text(&uri, port, adm, SECRET, &extra2)).unwrap();
    signal(p.child.id(), "USR2");
    wait_until("max-rows = 2", Duration::from_secs(10), || {
        let rows = get(port, "/items", Some(&user_token)).ok()?.json();
        (rows.as_array()?.len() == 2).then_some(())
    });
    exec(
        &f.in_db(),
        &format!(
            "CREATE TABLE api.late (x int); GRANT SELECT ON api.late TO {}",
            ident(&f.user)
        ),
    );
    let listed = |p: u16| -> bool {
        get(p, "/", Some(&user_token))
            .map(|r| r.json()["paths"].get("/late").is_some())
            .unwrap_or(false)
    };
    assert!(!listed(port), "listed before the schema cache reload");
    signal(p.child.id(), "USR1");
    wait_until("the new table in GET /", Duration::from_secs(10), || {
        listed(port).then_some(())
    });
    assert!(p.alive());
    drop(p);

    // 6. A wrong password: PostgREST logs the error and exits 1.
    let conf = dir.path("wrong.conf");
    let (port, adm) = (free_port(), free_port());
    let wrong = f.uri("wrong-pw", &host, db_port, &f.db);
    std::fs::write(&conf, config_text(&wrong, port, adm, SECRET, &extra)).unwrap();
    let mut p = start(&conf);
    let status_ = p.wait_exit(Duration::from_secs(15));
    assert_eq!(status_.code(), Some(1), "{}", p.log());
    let log = p.log();
    assert!(
        log.contains(&format!(
            "FATAL:  password authentication failed for user \\\"{}\\\"",
            f.auth
        )),
        "{log}"
    );
    assert!(log.contains("\"code\":\"PGRST000\""), "{log}");
    assert!(log.contains("postgrest: thread killed"), "{log}");
    assert!(
        !log.contains("wrong-pw"),
        "the password must not be logged: {log}"
    );

    // 7. A database that does not exist is retried, not fatal (as in PostgREST).
    let conf = dir.path("nodb.conf");
    let (port, adm) = (free_port(), free_port());
    let nodb = f.uri("auth-pw", &host, db_port, &format!("{}_missing", f.db));
    std::fs::write(&conf, config_text(&nodb, port, adm, SECRET, &extra)).unwrap();
    let mut p = start(&conf);
    p.wait_log("does not exist", Duration::from_secs(10));
    p.wait_log("Attempting to reconnect", Duration::from_secs(10));
    assert!(p.alive(), "{}", p.log());
    assert_eq!(status(adm, "/ready", None), Some(503));
    drop(p);

    // 8. A quote in a claim and a table name cannot break out of their literals.
    let conf = dir.path("quote.conf");
    let (port, adm) = (free_port(), free_port());
    let uri = f.uri("auth-pw", &host, db_port, &f.db);
    std::fs::write(&conf, config_text(&uri, port, adm, SECRET, &extra)).unwrap();
    let p = start(&conf);
    wait_until("/ready", Duration::from_secs(20), || {
        (status(adm, "/ready", None)? == 200).then_some(())
    });
    let evil = token(
        SECRET,
        json!({"role": f.user, "x": "'); DROP TABLE api.items; --\\"}),
    );
    let who = get(port, "/whoami", Some(&evil)).unwrap().json();
    assert_eq!(who[0]["claims"]["x"], "'); DROP TABLE api.items; --\\");
    let r = get(
        port,
        "/items%22%3B%20DROP%20TABLE%20api.items%3B--",
        Some(&user_token),
    )
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    let rows: Value = get(port, "/items", Some(&user_token)).unwrap().json();
    assert_eq!(rows.as_array().map(Vec::len), Some(3));
    let bad_role = token(SECRET, json!({"role": "no_such_role"}));
    let r = get(port, "/items", Some(&bad_role)).unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    drop(p);
}
