//! The running double: PostgREST v11.2.2's connection worker, pool, schema cache, admin server
//! and the small part of its API the tests need (`GET /`, `GET /<table>`).
//!
//! Source of truth: PostgREST v11.2.2 `src/PostgREST/AppState.hs` (`internalConnectionWorker`,
//! `establishConnection`, `checkIsFatal`, `loadSchemaCache`, `reReadConfig`), `App.hs`
//! (`postgrest`, `handleRequest`), `Admin.hs` and `Error.hs` (`pgErrorStatus`, error bodies).

use crate::config::{self, Config};
use crate::http::{Request, Response};
use crate::jwt;
use crate::pg::{ident, literal, Conn, PgError, Row, ServerError};
use crate::{log, VERSION};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// PostgREST's `application_name` fallback (`addFallbackAppName prettyVersion`).
const APP_NAME: &str = "PostgREST 11.2.2";
/// v11.2.2 refuses to run on anything older (`minimumPgVersion`).
const MIN_PG_VERSION: i64 = 90_600;
/// Retry delays: 1 s doubling, capped. PostgREST caps at 32 s; the double at 4 s, so tests
/// whose database appears late do not wait half a minute.
const RETRY_CAP_SECS: u64 = 4;

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub pg_type: String,
}

#[derive(Debug, Clone)]
pub struct Table {
    pub schema: String,
    pub name: String,
    pub description: Option<String>,
    pub columns: Vec<Column>,
}

/// The double's schema cache: the tables and views of `db-schemas` and their columns.
#[derive(Debug, Default)]
pub struct SchemaCache {
    pub tables: Vec<Table>,
}

/// Why a request could not get an answer from the database.
#[derive(Debug)]
pub enum DbError {
    Pg(PgError),
    /// `db-pool-acquisition-timeout` passed with every connection busy.
    AcquisitionTimeout,
}

impl From<PgError> for DbError {
    fn from(e: PgError) -> DbError {
        DbError::Pg(e)
    }
}

impl DbError {
    /// PostgREST's JSON for the error (`instance ToJSON SQL.UsageError`).
    pub fn body(&self) -> Value {
        match self {
            DbError::Pg(PgError::Connect(m)) => {
                json!({"code": "PGRST000", "details": m, "hint": null,
                "message": "Database connection error. Retrying the connection."})
            }
            DbError::Pg(PgError::Client(m)) => {
                json!({"code": "PGRST001", "details": m, "hint": null,
                "message": "Database client error. Retrying the connection."})
            }
            DbError::Pg(PgError::Server(e)) => json!({"code": e.code, "details": e.detail,
                "hint": e.hint, "message": e.message}),
            DbError::AcquisitionTimeout => {
                json!({"code": "PGRST003", "details": null, "hint": null,
                "message": "Timed out acquiring connection from connection pool."})
            }
        }
    }

    /// `pgErrorStatus`: `authenticated` is "the role is not db-anon-role".
    pub fn status(&self, authenticated: bool) -> u16 {
        match self {
            DbError::Pg(PgError::Connect(_) | PgError::Client(_)) => 503,
            DbError::AcquisitionTimeout => 504,
            DbError::Pg(PgError::Server(e)) => pg_error_status(authenticated, e),
        }
    }

    fn is_fatal(&self) -> bool {
        match self {
            DbError::Pg(e) => e.is_fatal_auth_failure(),
            DbError::AcquisitionTimeout => false,
        }
    }
}

/// PostgREST v11.2.2 `Error.hs` `pgErrorStatus`, line for line.
pub fn pg_error_status(authenticated: bool, e: &ServerError) -> u16 {
    let c = e.code.as_str();
    let p2 = c.get(..2).unwrap_or("");
    match c {
        "23503" | "23505" => return 409,
        "25006" => return 405,
        "P0001" => return 400,
        "42883" if e.message.starts_with("function xmlagg(") => return 406,
        "42883" | "42P01" => return 404,
        "42501" => return if authenticated { 403 } else { 401 },
        _ => {}
    }
    if c.starts_with("57P01") {
        return 503;
    }
    match p2 {
        "08" | "53" => 503,
        "09" | "25" | "2D" | "38" | "39" | "3B" | "40" | "55" | "57" | "58" | "F0" | "HV"
        | "P0" | "XX" => 500,
        "0L" | "0P" | "28" => 403,
        "54" => 413,
        "PT" => c[2..]
            .parse::<u16>()
            .ok()
            .filter(|s| (100..600).contains(s))
            .unwrap_or(500),
        _ => 400,
    }
}

struct PoolInner {
    idle: Vec<Conn>,
    open: usize,
    /// Bumped by a flush: connections of an older generation are closed when returned.
    generation: u64,
}

/// At most `db-pool` connections, opened on demand, as hasql-pool does.
pub struct Pool {
    uri: crate::dburi::DbUri,
    size: usize,
    timeout: Duration,
    inner: Mutex<PoolInner>,
    freed: Condvar,
}

pub struct Pooled<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    generation: u64,
    /// Set when the connection must not be reused (broken, or left inside a transaction).
    pub broken: bool,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("present until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        let conn = self.conn.take();
        let mut inner = self.pool.lock();
        let closing = if self.broken || self.generation != inner.generation {
            inner.open -= 1;
            conn
        } else {
            inner.idle.extend(conn);
            None
        };
        drop(inner);
        self.pool.freed.notify_one();
        drop(closing);
    }
}

impl Pool {
    fn new(config: &Config) -> Pool {
        Pool {
            uri: config.db_uri.clone(),
            size: config.db_pool as usize,
            timeout: Duration::from_secs(config.db_pool_acquisition_timeout as u64),
            inner: Mutex::new(PoolInner {
                idle: Vec::new(),
                open: 0,
                generation: 0,
            }),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn acquire(&self) -> Result<Pooled<'_>, DbError> {
        let deadline = Instant::now() + self.timeout;
        let mut inner = self.lock();
        loop {
            let generation = inner.generation;
            if let Some(conn) = inner.idle.pop() {
                return Ok(self.pooled(conn, generation));
            }
            if inner.open < self.size {
                inner.open += 1;
                drop(inner);
                return match Conn::connect(&self.uri, APP_NAME) {
                    Ok(conn) => Ok(self.pooled(conn, generation)),
                    Err(e) => {
                        self.lock().open -= 1;
                        self.freed.notify_one();
                        Err(e.into())
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DbError::AcquisitionTimeout);
            }
            inner = self
                .freed
                .wait_timeout(inner, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn pooled(&self, conn: Conn, generation: u64) -> Pooled<'_> {
        Pooled {
            pool: self,
            conn: Some(conn),
            generation,
            broken: false,
        }
    }

    /// `flushPool`: close the idle connections now, the busy ones when they come back.
    pub fn flush(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        let idle = std::mem::take(&mut inner.idle);
        inner.open -= idle.len();
        drop(inner);
        self.freed.notify_all();
        drop(idle);
    }

    /// Runs `sql` on a pooled connection. A connection that broke, or that is left inside a
    /// transaction it cannot roll back, is not reused.
    pub fn run(&self, sql: &str) -> Result<Vec<Vec<Row>>, DbError> {
        let mut conn = self.acquire()?;
        let result = conn.simple_query(sql);
        let broken = matches!(result, Err(PgError::Client(_)));
        if broken || (conn.tx_status != b'I' && conn.simple_query("ROLLBACK").is_err()) {
            conn.broken = true;
        }
        Ok(result?)
    }
}

#[derive(Default)]
struct WorkerState {
    running: bool,
    again: bool,
}

pub struct App {
    path: String,
    config: RwLock<Arc<Config>>,
    schema_cache: RwLock<Option<Arc<SchemaCache>>>,
    pool: Pool,
    worker: Mutex<WorkerState>,
    /// Seconds until the next connection attempt, for `Retry-After` (`stateRetryNextIn`).
    retry_next_in: AtomicU64,
    /// Set once the API server listens: the admin server's `/live`.
    pub api_listening: AtomicBool,
}

/// While this file exists, config re-reads are refused with its content as the reason
/// ([`App::reload_config`]); `/tmp` is the container's writable tmpfs.
pub const REFUSE_RELOAD_FILE: &str = "/tmp/postgrest-double-refuse-reload";

/// Exits as PostgREST does when its connection worker kills the main thread: GHC's top handler
/// prints `<prog>: thread killed` and exits with 1.
fn die() -> ! {
    eprintln!("postgrest: thread killed");
    std::process::exit(1)
}

impl App {
    pub fn new(path: &str, config: Config) -> App {
        App {
            path: path.into(),
            pool: Pool::new(&config),
            config: RwLock::new(Arc::new(config)),
            schema_cache: RwLock::new(None),
            worker: Mutex::new(WorkerState::default()),
            retry_next_in: AtomicU64::new(0),
            api_listening: AtomicBool::new(false),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn schema_cache(&self) -> Option<Arc<SchemaCache>> {
        self.schema_cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn put_schema_cache(&self, cache: Option<SchemaCache>) {
        *self.schema_cache.write().unwrap_or_else(|e| e.into_inner()) = cache.map(Arc::new);
    }

    /// `reReadConfig False`: SIGUSR2, and every successful (re)connection when `db-config`.
    /// Only the reloadable keys change; a bad file keeps the old config.
    ///
    /// Fault injection for tests (not PostgREST behaviour): while [`REFUSE_RELOAD_FILE`]
    /// exists, every re-read is refused with its content as the reason, exactly as PostgREST
    /// refuses a file it cannot use. It stands in for a refusal the manager cannot foresee (a
    /// rule of a newer PostgREST), which no valid spec can produce against this double.
    pub fn reload_config(&self) {
        let loaded = match std::fs::read_to_string(REFUSE_RELOAD_FILE) {
            Ok(reason) => Err(reason.trim().to_owned()),
            Err(_) => config::load(&self.path),
        };
        match loaded {
            Ok((new, _)) => {
                let merged = self.config().reloaded(new);
                *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(merged);
                log("Config reloaded");
            }
            Err(e) => log(&format!("Failed reloading config: {e}")),
        }
    }

    /// `connectionWorker`: runs the worker on its own thread; a call while it runs makes it
    /// run once more afterwards (PostgREST's leading-edge debounce).
    pub fn connection_worker(self: &Arc<Self>) {
        let mut state = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        if state.running {
            state.again = true;
            return;
        }
        state.running = true;
        drop(state);
        let app = self.clone();
        std::thread::Builder::new()
            .name("connection-worker".into())
            .spawn(move || loop {
                app.work();
                let mut state = app.worker.lock().unwrap_or_else(|e| e.into_inner());
                if std::mem::take(&mut state.again) {
                    continue;
                }
                state.running = false;
                break;
            })
            .expect("cannot start the connection worker");
    }

    /// `internalConnectionWorker`: connect (retrying), re-read the config, load the schema
    /// cache; a failed schema load starts over.
    fn work(&self) {
        loop {
            log(&format!("Starting PostgREST {VERSION}..."));
            log("Attempting to connect to the database...");
            self.establish_connection();
            log("Connection successful");
            if self.config().db_config {
                self.reload_config();
            }
            match self.load_schema_cache() {
                Ok(cache) => {
                    self.put_schema_cache(Some(cache));
                    log("Schema cache loaded");
                    return;
                }
                Err(e) => {
                    self.put_schema_cache(None);
                    log("An error ocurred when loading the schema cache");
                    log(&e.body().to_string());
                    if e.is_fatal() {
                        die();
                    }
                }
            }
        }
    }

    /// `establishConnection`: flush the pool and ask for the server version until it works.
    /// An authentication failure (`checkIsFatal`) logs and exits; anything else is retried.
    fn establish_connection(&self) {
        let mut delay = 1;
        loop {
            self.pool.flush();
            let version = self.pool.run(
                "SELECT current_setting('server_version_num')::integer, current_setting('server_version')",
            );
            match version {
                Ok(sets) => {
                    let num = sets
                        .first()
                        .and_then(|rows| rows.first())
                        .and_then(|row| row.first().cloned().flatten())
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0);
                    if num < MIN_PG_VERSION {
                        log(
                            "Cannot run in this PostgreSQL version, PostgREST needs at least 9.6.0",
                        );
                        die();
                    }
                    self.retry_next_in.store(0, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    log(&e.body().to_string());
                    if e.is_fatal() {
                        if let DbError::Pg(PgError::Connect(reason)) = &e {
                            log(reason.trim_end());
                        }
                        die();
                    }
                    log(&format!(
                        "Attempting to reconnect to the database in {delay} seconds..."
                    ));
                    self.retry_next_in.store(delay, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_secs(delay));
                    delay = (delay * 2).min(RETRY_CAP_SECS);
                }
            }
        }
    }

    fn load_schema_cache(&self) -> Result<SchemaCache, DbError> {
        let schemas: Vec<String> = self.config().schemas().iter().map(|s| literal(s)).collect();
        let sql = format!(
            "SELECT n.nspname, c.relname, obj_description(c.oid, 'pg_class'), \
               coalesce((SELECT json_agg(json_build_array(a.attname, format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum) \
                 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]')::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('v','r','m','f','p') AND NOT c.relispartition \
               AND n.nspname = ANY(ARRAY[{}]::text[]) \
             ORDER BY 1, 2",
            if schemas.is_empty() { "NULL".into() } else { schemas.join(", ") }
        );
        let sets = self.pool.run(&sql)?;
        let rows = sets.into_iter().next().unwrap_or_default();
        let tables = rows
            .into_iter()
            .map(|row| {
                let text = |i: usize| row.get(i).cloned().flatten();
                let columns: Vec<(String, String)> =
                    serde_json::from_str(&text(3).unwrap_or_default()).unwrap_or_default();
                Table {
                    schema: text(0).unwrap_or_default(),
                    name: text(1).unwrap_or_default(),
                    description: text(2),
                    columns: columns
                        .into_iter()
                        .map(|(name, pg_type)| Column { name, pg_type })
                        .collect(),
                }
            })
            .collect();
        Ok(SchemaCache { tables })
    }

    /// The admin server (v11.2.2 `Admin.hs`, with `db-channel-enabled = false`, which is how
    /// the double always behaves): `/live` is "the API port is up"; `/ready` adds "schema
    /// cache loaded" and a `SELECT 1` through the pool.
    pub fn admin(&self, request: &Request) -> Response {
        if !matches!(request.method.as_str(), "GET" | "HEAD") {
            return Response::empty(404);
        }
        let live = self.api_listening.load(Ordering::Relaxed);
        match request.path.as_str() {
            "/live" => Response::empty(if live { 200 } else { 503 }),
            "/ready" => {
                let ready =
                    live && self.schema_cache().is_some() && self.pool.run("SELECT 1").is_ok();
                Response::empty(if ready { 200 } else { 503 })
            }
            _ => Response::empty(404),
        }
    }

    /// The API. Order as in v11.2.2's `postgrest`: the JWT first (401 without touching the
    /// database), then "is there a schema cache" (503), then the path.
    pub fn api(self: &Arc<Self>, request: &Request) -> Response {
        let config = self.config();
        let mut response = self.respond(request, &config);
        if response.status == 503 {
            // PostgREST starts the connection worker whenever it answers 503.
            self.connection_worker();
            let delay = self.retry_next_in.load(Ordering::Relaxed);
            response.headers.push(("Retry-After", delay.to_string()));
        }
        response
    }

    fn respond(&self, request: &Request, config: &Config) -> Response {
        let (role, claims) = match authenticate(request, config) {
            Ok(auth) => auth,
            Err(response) => return response,
        };
        let Some(cache) = self.schema_cache() else {
            return error(
                503,
                "PGRST002",
                "Could not query the database for the schema cache. Retrying.",
            );
        };
        let schemas = config.schemas();
        let profile = match request.header("Accept-Profile") {
            Some(p) => p.trim().to_string(),
            None => schemas.first().cloned().unwrap_or_else(|| "public".into()),
        };
        if !schemas.contains(&profile) {
            return error(
                406,
                "PGRST106",
                &format!(
                    "The schema must be one of the following: {}",
                    schemas.join(", ")
                ),
            );
        }
        let Some(segments) = path_segments(&request.path) else {
            return Response::json(404, &json!({}));
        };
        let target = match segments.as_slice() {
            [] => None,
            [table] => Some(table.as_str()),
            _ => return Response::json(404, &json!({})), // v11's `NotFound`: an empty object
        };
        if !matches!(request.method.as_str(), "GET" | "HEAD") {
            return error(
                405,
                "PGRST-DOUBLE",
                "The PostgREST test double only reads: GET and HEAD",
            );
        }
        let authenticated = Some(&role) != config.db_anon_role.as_ref();
        // PostgreSQL strings cannot hold NUL; PostgreSQL's own answer to one is this error.
        if role.contains('\0') || target.is_some_and(|t| t.contains('\0')) {
            let e = ServerError {
                code: "22021".into(),
                message: "invalid byte sequence for encoding \"UTF8\": 0x00".into(),
                ..ServerError::default()
            };
            return Response::json(400, &DbError::Pg(PgError::Server(e)).body());
        }
        let setup = format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY; \
             SELECT set_config('search_path', {}, true), set_config('role', {}, true), \
               set_config('request.jwt.claims', {}, true), set_config('request.method', {}, true), \
               set_config('request.path', {}, true);",
            literal(&format!("{}, \"public\"", ident(&profile))),
            literal(&role),
            literal(&Value::Object(claims).to_string()),
            literal(&request.method),
            literal(&request.path),
        );
        let result = match target {
            None => self.openapi(&setup, &profile, &cache, config),
            Some(table) => self.read(&setup, &profile, table, config),
        };
        match result {
            Ok(response) => response,
            Err(e) => {
                let mut response = Response::json(e.status(authenticated), &e.body());
                if response.status == 401 {
                    response.headers.push(("WWW-Authenticate", "Bearer".into()));
                }
                response
            }
        }
    }

    fn read(
        &self,
        setup: &str,
        schema: &str,
        table: &str,
        config: &Config,
    ) -> Result<Response, DbError> {
        let limit = match config.max_rows {
            Some(n) if n >= 0 => format!(" LIMIT {n}"),
            _ => String::new(),
        };
        let sql = format!(
            "{setup} SELECT pg_catalog.count(_postgrest_t)::text, \
               coalesce(json_agg(_postgrest_t), '[]')::text \
             FROM (SELECT * FROM {}.{}{limit}) _postgrest_t; COMMIT",
            ident(schema),
            ident(table)
        );
        let sets = self.pool.run(&sql)?;
        let row = sets.get(2).and_then(|rows| rows.first()).cloned();
        let cell = |i: usize| row.as_ref().and_then(|r| r.get(i).cloned().flatten());
        let count: u64 = cell(0).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = cell(1).unwrap_or_else(|| "[]".into());
        let range = if count == 0 {
            "*/*".to_string()
        } else {
            format!("0-{}/*", count - 1)
        };
        Ok(Response {
            status: 200,
            headers: vec![
                ("Content-Type", "application/json; charset=utf-8".into()),
                ("Content-Range", range),
            ],
            body: body.into_bytes(),
        })
    }

    /// `GET /`: the tables and views of the schema that the role can use (v11's default
    /// `openapi-mode = follow-privileges`, same privilege test as `accessibleTables`).
    fn openapi(
        &self,
        setup: &str,
        schema: &str,
        cache: &SchemaCache,
        config: &Config,
    ) -> Result<Response, DbError> {
        let sql = format!(
            "{setup} SELECT coalesce(json_agg(c.relname ORDER BY c.relname), '[]')::text, \
               obj_description((SELECT oid FROM pg_namespace WHERE nspname = {schema_lit}), 'pg_namespace') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('v','r','m','f','p') AND NOT c.relispartition \
               AND n.nspname = {schema_lit} \
               AND (pg_has_role(c.relowner, 'USAGE') \
                 OR has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') \
                 OR has_any_column_privilege(c.oid, 'SELECT, INSERT, UPDATE, REFERENCES')); COMMIT",
            schema_lit = literal(schema)
        );
        let sets = self.pool.run(&sql)?;
        let row = sets.get(2).and_then(|rows| rows.first()).cloned();
        let cell = |i: usize| row.as_ref().and_then(|r| r.get(i).cloned().flatten());
        let accessible: Vec<String> =
            serde_json::from_str(&cell(0).unwrap_or_default()).unwrap_or_default();
        let tables: Vec<&Table> = cache
            .tables
            .iter()
            .filter(|t| t.schema == schema && accessible.contains(&t.name))
            .collect();
        let doc = openapi_document(&tables, cell(1), config);
        Ok(Response {
            status: 200,
            headers: vec![(
                "Content-Type",
                "application/openapi+json; charset=utf-8".into(),
            )],
            body: doc.to_string().into_bytes(),
        })
    }
}

/// Swagger 2.0 as v11's `Response/OpenAPI.hs` shapes it, reduced to the read side.
fn openapi_document(tables: &[&Table], description: Option<String>, config: &Config) -> Value {
    let (scheme, host, base_path) = match config
        .openapi_server_proxy_uri
        .as_deref()
        .and_then(|u| u.split_once("://"))
    {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            (scheme.to_string(), host.to_string(), format!("/{path}"))
        }
        None => {
            let host = match config.server_host.as_str() {
                "!4" | "*4" | "*" | "!6" | "*6" => "0.0.0.0",
                h => h,
            };
            (
                "http".into(),
                format!("{host}:{}", config.server_port),
                "/".into(),
            )
        }
    };
    let mut paths = Map::new();
    paths.insert(
        "/".into(),
        json!({"get": {"tags": ["Introspection"], "summary": "OpenAPI description (this document)",
            "produces": ["application/openapi+json", "application/json"],
            "responses": {"200": {"description": "OK"}}}}),
    );
    let mut definitions = Map::new();
    for t in tables {
        let mut get = json!({"tags": [t.name],
            "responses": {"200": {"description": "OK", "schema": {"type": "array",
                "items": {"$ref": format!("#/definitions/{}", t.name)}}},
                "206": {"description": "Partial Content"}}});
        if let Some(d) = &t.description {
            get["summary"] = d.clone().into();
        }
        paths.insert(format!("/{}", t.name), json!({ "get": get }));
        let properties: Map<String, Value> = t
            .columns
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    json!({"type": swagger_type(&c.pg_type), "format": c.pg_type}),
                )
            })
            .collect();
        definitions.insert(
            t.name.clone(),
            json!({"type": "object", "properties": properties}),
        );
    }
    json!({
        "swagger": "2.0",
        "info": {"description": description.unwrap_or_default(), "title": "PostgREST API",
            "version": format!("{VERSION} (test double)")},
        "host": host,
        "basePath": base_path,
        "schemes": [scheme],
        "consumes": ["application/json", "application/vnd.pgrst.object+json", "text/csv"],
        "produces": ["application/json", "application/vnd.pgrst.object+json", "text/csv"],
        "paths": paths,
        "definitions": definitions,
        "externalDocs": {"description": "PostgREST Documentation",
            "url": "https://postgrest.org/en/v11.2/api.html"},
    })
}

fn swagger_type(pg_type: &str) -> &'static str {
    match pg_type {
        "smallint" | "integer" | "bigint" => "integer",
        "numeric" | "real" | "double precision" => "number",
        "boolean" => "boolean",
        t if t.starts_with("numeric(") => "number",
        t if t.ends_with("[]") => "array",
        "json" | "jsonb" => "object",
        _ => "string",
    }
}

/// Wai's `pathInfo`: the path split on `/` and percent-decoded; `None` if undecodable.
fn path_segments(path: &str) -> Option<Vec<String>> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    if trimmed.is_empty() {
        return Some(Vec::new());
    }
    trimmed
        .split('/')
        .map(|segment| {
            let bytes = segment.as_bytes();
            let mut out = Vec::with_capacity(bytes.len());
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' {
                    let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 3;
                } else {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
            String::from_utf8(out).ok()
        })
        .collect()
}

/// PostgREST's error body.
pub fn error(status: u16, code: &str, message: &str) -> Response {
    Response::json(
        status,
        &json!({"code": code, "details": null, "hint": null, "message": message}),
    )
}

/// v11.2.2 `Auth.hs`: verify the bearer token (if any), then pick the role: the token's `role`
/// claim, else `db-anon-role`, else 401 "Anonymous access is disabled". The claims get `role`.
pub fn authenticate(
    request: &Request,
    config: &Config,
) -> Result<(String, Map<String, Value>), Response> {
    let token = request.header("Authorization").and_then(|h| {
        let (scheme, token) = h.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    let mut claims = Map::new();
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        let Some(secret) = &config.jwt_secret else {
            return Err(error(500, "PGRST300", "Server lacks JWT secret"));
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        match jwt::verify(token, secret.as_bytes(), config.jwt_aud.as_deref(), now) {
            Ok(c) => claims = c,
            Err(e) => {
                let message = e.message();
                let mut response = error(401, "PGRST301", &message);
                let description = message.replace('\\', "\\\\").replace('"', "\\\"");
                response.headers.push((
                    "WWW-Authenticate",
                    format!("Bearer error=\"invalid_token\", error_description=\"{description}\""),
                ));
                return Err(response);
            }
        }
    }
    let role = match claims.get("role") {
        Some(Value::String(r)) => Some(r.clone()),
        Some(other) => Some(other.to_string()),
        None => config.db_anon_role.clone(),
    };
    let Some(role) = role else {
        let mut response = error(401, "PGRST302", "Anonymous access is disabled");
        response.headers.push(("WWW-Authenticate", "Bearer".into()));
        return Err(response);
    };
    claims.insert("role".into(), Value::String(role.clone()));
    Ok((role, claims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::tests::{mint, SECRET};

    fn config(extra: &str) -> Config {
        let text = format!(
            "db-uri = \"postgres://u:pw@no-such-host.invalid:6432/d\"\njwt-secret = \"{SECRET}\"\njwt-aud = \"authenticated\"\n{extra}"
        );
        Config::from_bindings(&config::parse(&text, &|_| None).unwrap()).unwrap()
    }

    fn request(path: &str, auth: Option<String>) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
            headers: auth
                .map(|a| vec![("authorization".to_string(), a)])
                .unwrap_or_default(),
        }
    }

    fn body(r: &Response) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Never connected: PostgREST answers 503 PGRST002 with Retry-After to every request whose
    /// JWT passed, and 401 before that to a bad token.
    #[test]
    fn without_a_database() {
        let app = Arc::new(App::new("/nonexistent", config("db-anon-role = \"anon\"")));
        for path in ["/", "/items", "/a/b"] {
            let r = app.respond(&request(path, None), &app.config());
            assert_eq!(r.status, 503, "{path}");
            assert_eq!(
                body(&r),
                json!({"code": "PGRST002", "details": null, "hint": null,
                    "message": "Could not query the database for the schema cache. Retrying."})
            );
        }
        let good = mint(
            SECRET,
            &json!({"role": "authenticated", "aud": "authenticated"}),
        );
        let r = app.respond(&request("/", Some(format!("Bearer {good}"))), &app.config());
        assert_eq!(r.status, 503);

        let wrong = mint("ffffffffffffffffffffffffffffffff", &json!({}));
        let r = app.respond(
            &request("/", Some(format!("Bearer {wrong}"))),
            &app.config(),
        );
        assert_eq!(r.status, 401);
        assert_eq!(
            body(&r),
            json!({"code": "PGRST301", "details": null, "hint": null, "message": "JWSError JWSInvalidSignature"})
        );
        assert!(header(&r, "WWW-Authenticate")
            .unwrap()
            .starts_with("Bearer error=\"invalid_token\""));
        let aud = mint(SECRET, &json!({"aud": "someone-else"}));
        let r = app.respond(&request("/", Some(format!("bearer {aud}"))), &app.config());
        assert_eq!(body(&r)["message"], "JWT not in audience");

        // api() adds Retry-After to a 503 (and wakes the connection worker; it only logs here).
        let r = app.api(&request("/", None));
        assert_eq!((r.status, header(&r, "Retry-After").is_some()), (503, true));
    }

    #[test]
    fn no_token_and_no_anon_role_is_401() {
        let app = App::new("/nonexistent", config(""));
        let r = app.respond(&request("/", None), &app.config());
        assert_eq!(r.status, 401);
        assert_eq!(body(&r)["code"], "PGRST302");
        assert_eq!(header(&r, "WWW-Authenticate"), Some("Bearer"));
    }

    #[test]
    fn roles_and_claims() {
        let c = config("db-anon-role = \"web_anon\"");
        let (role, claims) = authenticate(&request("/", None), &c).unwrap();
        assert_eq!(
            (role.as_str(), claims),
            ("web_anon", {
                let mut m = Map::new();
                m.insert("role".into(), "web_anon".into());
                m
            })
        );
        let t = mint(SECRET, &json!({"role": "authenticated", "sub": "u1"}));
        let (role, claims) = authenticate(&request("/", Some(format!("Bearer {t}"))), &c).unwrap();
        assert_eq!(role, "authenticated");
        assert_eq!(claims["sub"], "u1");
        // A token without a role claim runs as the anonymous role.
        let t = mint(SECRET, &json!({"sub": "u1"}));
        let (role, claims) = authenticate(&request("/", Some(format!("Bearer {t}"))), &c).unwrap();
        assert_eq!(
            (role.as_str(), &claims["role"]),
            ("web_anon", &json!("web_anon"))
        );
    }

    #[test]
    fn admin_without_a_database() {
        let app = App::new("/nonexistent", config(""));
        let get = |p: &str| app.admin(&request(p, None)).status;
        assert_eq!((get("/live"), get("/ready"), get("/")), (503, 503, 404));
        app.api_listening.store(true, Ordering::Relaxed);
        assert_eq!((get("/live"), get("/ready")), (200, 503));
    }

    #[test]
    fn error_statuses_follow_pg_error_status() {
        let e = |code: &str| ServerError {
            code: code.into(),
            message: "m".into(),
            ..ServerError::default()
        };
        assert_eq!(pg_error_status(false, &e("42501")), 401);
        assert_eq!(pg_error_status(true, &e("42501")), 403);
        assert_eq!(pg_error_status(true, &e("42P01")), 404);
        assert_eq!(pg_error_status(true, &e("08006")), 503);
        assert_eq!(pg_error_status(true, &e("57P01")), 503);
        assert_eq!(pg_error_status(true, &e("57014")), 500);
        assert_eq!(pg_error_status(true, &e("28000")), 403);
        assert_eq!(pg_error_status(true, &e("22023")), 400);
        assert_eq!(pg_error_status(true, &e("PT402")), 402);
        let body = DbError::Pg(PgError::Server(ServerError {
            code: "42501".into(),
            message: "permission denied for table x".into(),
            ..ServerError::default()
        }))
        .body();
        assert_eq!(
            body,
            json!({"code":"42501","details":null,"hint":null,"message":"permission denied for table x"})
        );
    }

    #[test]
    fn paths() {
        assert_eq!(path_segments("/"), Some(vec![]));
        assert_eq!(path_segments("/a%20b"), Some(vec!["a b".to_string()]));
        assert_eq!(
            path_segments("/rpc/f"),
            Some(vec!["rpc".to_string(), "f".to_string()])
        );
        assert_eq!(path_segments("/%zz"), None);
    }

    #[test]
    fn the_openapi_document() {
        let t = Table {
            schema: "public".into(),
            name: "items".into(),
            description: None,
            columns: vec![
                Column {
                    name: "id".into(),
                    pg_type: "integer".into(),
                },
                Column {
                    name: "name".into(),
                    pg_type: "text".into(),
                },
            ],
        };
        let doc = openapi_document(&[&t], None, &config(""));
        assert_eq!(doc["swagger"], "2.0");
        assert_eq!(doc["host"], "0.0.0.0:3000");
        assert!(doc["paths"]["/"].is_object());
        assert_eq!(
            doc["paths"]["/items"]["get"]["responses"]["200"]["schema"]["items"]["$ref"],
            "#/definitions/items"
        );
        assert_eq!(
            doc["definitions"]["items"]["properties"]["id"],
            json!({"type": "integer", "format": "integer"})
        );
        let c = config("openapi-server-proxy-uri = \"https://example.org/db/p1\"");
        let doc = openapi_document(&[], None, &c);
        assert_eq!(
            (&doc["host"], &doc["basePath"], &doc["schemes"]),
            (&json!("example.org"), &json!("/db/p1"), &json!(["https"]))
        );
    }
}
