//! A small PostgreSQL client: the simple query protocol only (no prepared statements, so it works
//! through PgBouncer in transaction mode), no TLS, authentication by SCRAM-SHA-256, md5 or
//! cleartext password. Results come back in text format: the double asks PostgreSQL for JSON
//! (`json_agg`) and so needs no type mapping.
//!
//! Errors are worded like libpq's, because real PostgREST shows libpq's message (in the
//! `details` of `PGRST000`) and decides from it whether a failure is fatal.

use crate::dburi::DbUri;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The PostgreSQL server's error fields that PostgREST shows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgError {
    /// Could not connect or log in. The text is libpq's `PQerrorMessage`, e.g.
    /// `connection to server at "db" (10.0.0.2), port 5432 failed: FATAL:  password
    /// authentication failed for user "x"` (hasql's `ConnectionUsageError`).
    Connect(String),
    /// The server refused a query; the connection is still usable (hasql's `ResultError`).
    Server(ServerError),
    /// The connection broke or spoke nonsense during a query (hasql's `ClientError`).
    Client(String),
}

impl PgError {
    /// PostgREST's `checkIsFatal` for connection errors (identical from v11.2.2 to v16): only
    /// these two texts make it exit. Everything else ("database does not exist", PgBouncer's
    /// "SASL authentication failed", DNS, refused) is retried.
    pub fn is_fatal_auth_failure(&self) -> bool {
        match self {
            PgError::Connect(m) => {
                m.contains("FATAL:  password authentication failed")
                    || m.contains("no password supplied")
            }
            _ => false,
        }
    }
}

/// A row in text format; `None` is SQL NULL.
pub type Row = Vec<Option<String>>;

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
}

pub struct Conn {
    reader: BufReader<Stream>,
    writer: BufWriter<Stream>,
    /// The transaction status of the last ReadyForQuery: `I` idle, `T` in a transaction,
    /// `E` in a failed transaction.
    pub tx_status: u8,
}

/// How long a connection attempt (TCP connect, then the login exchange) may take. libpq waits
/// for the OS by default; a bound keeps `/ready` and the retry loop responsive.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn be32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads NUL-terminated strings out of a message body.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn cstr(&mut self) -> Option<String> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let s = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = &self.0[end + 1..];
        Some(s)
    }
}

fn parse_error(body: &[u8]) -> ServerError {
    let mut e = ServerError::default();
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let mut f = Fields(tail);
        let value = f.cstr().unwrap_or_default();
        rest = f.0;
        match kind {
            b'S' => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    e
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Conn {
    /// Connects and logs in as libpq would with this URI (defaults: host a Unix socket in
    /// /var/run/postgresql, port 5432, user `$USER`, dbname the user).
    pub fn connect(uri: &DbUri, app_name: &str) -> Result<Conn, PgError> {
        let user = uri
            .user
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".into());
        let dbname = uri.dbname.clone().unwrap_or_else(|| user.clone());
        let port = uri.port.unwrap_or(5432);
        let host = uri
            .host
            .clone()
            .unwrap_or_else(|| "/var/run/postgresql".into());
        let (stream, place) = open(&host, port)?;
        let fail = |m: String| PgError::Connect(format!("{place} failed: {m}\n"));
        let io_fail = |e: io::Error| fail(format!("{e}"));
        stream
            .set_read_timeout(Some(CONNECT_TIMEOUT))
            .map_err(io_fail)?;
        let mut conn = Conn {
            writer: BufWriter::new(stream.try_clone().map_err(io_fail)?),
            reader: BufReader::new(stream),
            tx_status: b'I',
        };
        conn.startup(&user, &dbname, uri.password.as_deref(), app_name)
            .map_err(|e| match e {
                Login::Server(e) => fail(format!("{}:  {}", e.severity, e.message)),
                Login::Client(m) => fail(m),
            })?;
        conn.reader
            .get_ref()
            .set_read_timeout(None)
            .map_err(io_fail)?;
        Ok(conn)
    }

    fn send(&mut self, kind: u8, body: &[u8]) -> io::Result<()> {
        self.writer.write_all(&[kind])?;
        self.writer
            .write_all(&(body.len() as i32 + 4).to_be_bytes())?;
        self.writer.write_all(body)?;
        self.writer.flush()
    }

    fn recv(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.reader.read_exact(&mut head)?;
        let len = be32(&head[1..]);
        if !(4..=64 * 1024 * 1024).contains(&len) {
            return Err(protocol("invalid message length from the server"));
        }
        let mut body = vec![0u8; len as usize - 4];
        self.reader.read_exact(&mut body)?;
        Ok((head[0], body))
    }

    fn startup(
        &mut self,
        user: &str,
        dbname: &str,
        password: Option<&str>,
        app_name: &str,
    ) -> Result<(), Login> {
        let mut body = 196_608i32.to_be_bytes().to_vec(); // protocol 3.0
        for (k, v) in [
            ("user", user),
            ("database", dbname),
            ("application_name", app_name),
            ("client_encoding", "UTF8"),
        ] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        self.writer.write_all(&msg)?;
        self.writer.flush()?;
        let no_password = || Login::Client("fe_sendauth: no password supplied".into());
        let mut scram: Option<Scram> = None;
        loop {
            let (kind, body) = self.recv()?;
            match kind {
                b'E' => return Err(Login::Server(parse_error(&body))),
                b'R' if body.len() >= 4 => match be32(&body) {
                    0 => {}
                    3 => {
                        let pw = password.ok_or_else(no_password)?;
                        self.send(b'p', &[pw.as_bytes(), b"\0"].concat())?;
                    }
                    5 if body.len() >= 8 => {
                        let pw = password.ok_or_else(no_password)?;
                        let inner = hex(&Md5::digest([pw.as_bytes(), user.as_bytes()].concat()));
                        let outer = hex(&Md5::digest([inner.as_bytes(), &body[4..8]].concat()));
                        self.send(b'p', format!("md5{outer}\0").as_bytes())?;
                    }
                    10 => {
                        let mut f = Fields(&body[4..]);
                        let mut mechanisms = Vec::new();
                        while let Some(m) = f.cstr().filter(|m| !m.is_empty()) {
                            mechanisms.push(m);
                        }
                        if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                            return Err(Login::Client(
                                "none of the server's SASL authentication mechanisms are supported"
                                    .into(),
                            ));
                        }
                        let pw = password.ok_or_else(no_password)?;
                        let s = Scram::new(pw);
                        let first = s.client_first();
                        let mut msg = b"SCRAM-SHA-256\0".to_vec();
                        msg.extend_from_slice(&(first.len() as i32).to_be_bytes());
                        msg.extend_from_slice(first.as_bytes());
                        self.send(b'p', &msg)?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram.as_mut().ok_or_else(|| protocol("unexpected SASL"))?;
                        let server_first = String::from_utf8_lossy(&body[4..]).into_owned();
                        let fin = s.client_final(&server_first).map_err(Login::Client)?;
                        self.send(b'p', fin.as_bytes())?;
                    }
                    12 => {
                        let s = scram.as_ref().ok_or_else(|| protocol("unexpected SASL"))?;
                        s.verify_server(&String::from_utf8_lossy(&body[4..]))
                            .map_err(Login::Client)?;
                    }
                    other => {
                        return Err(Login::Client(format!(
                            "authentication method {other} not supported"
                        )))
                    }
                },
                b'Z' => {
                    self.tx_status = body.first().copied().unwrap_or(b'I');
                    return Ok(());
                }
                // ParameterStatus, BackendKeyData, NoticeResponse
                b'S' | b'K' | b'N' => {}
                _ => return Err(protocol("unexpected message during login").into()),
            }
        }
    }

    /// Runs `sql` (one or more statements) with the simple query protocol. Returns the rows of
    /// each statement, in order. A server error stops at the failing statement, as PostgreSQL
    /// does; `tx_status` then tells whether a `ROLLBACK` is needed.
    pub fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Row>>, PgError> {
        if sql.contains('\0') {
            // The protocol's strings are NUL-terminated; the caller must never get here.
            return Err(PgError::Client("query text contains a NUL byte".into()));
        }
        let client = |e: io::Error| PgError::Client(format!("{e}"));
        self.send(b'Q', &[sql.as_bytes(), b"\0"].concat())
            .map_err(client)?;
        let mut sets = Vec::new();
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (kind, body) = self.recv().map_err(client)?;
            match kind {
                b'D' => rows.push(parse_row(&body).map_err(client)?),
                b'C' | b'I' => sets.push(std::mem::take(&mut rows)),
                b'E' => error = Some(parse_error(&body)),
                b'Z' => {
                    self.tx_status = body.first().copied().unwrap_or(b'I');
                    return match error {
                        Some(e) if e.severity == "FATAL" || e.severity == "PANIC" => {
                            Err(PgError::Client(format!("{}:  {}", e.severity, e.message)))
                        }
                        Some(e) => Err(PgError::Server(e)),
                        None => Ok(sets),
                    };
                }
                b'T' | b'S' | b'N' | b'A' => {}
                _ => return Err(PgError::Client("unexpected message from the server".into())),
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.send(b'X', &[]); // Terminate, politely
    }
}

fn parse_row(body: &[u8]) -> io::Result<Row> {
    if body.len() < 2 {
        return Err(protocol("short DataRow"));
    }
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        let len = be32(
            body.get(at..at + 4)
                .ok_or_else(|| protocol("short DataRow"))?,
        );
        at += 4;
        if len < 0 {
            row.push(None);
        } else {
            let end = at + len as usize;
            let bytes = body.get(at..end).ok_or_else(|| protocol("short DataRow"))?;
            row.push(Some(String::from_utf8_lossy(bytes).into_owned()));
            at = end;
        }
    }
    Ok(row)
}

enum Login {
    Server(ServerError),
    Client(String),
}

impl From<io::Error> for Login {
    fn from(e: io::Error) -> Login {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Login::Client("server closed the connection unexpectedly".into())
        } else {
            Login::Client(e.to_string())
        }
    }
}

/// Opens the socket; returns it with libpq's description of the place, for error messages.
fn open(host: &str, port: u16) -> Result<(Stream, String), PgError> {
    if host.starts_with('/') {
        let path = format!("{host}/.s.PGSQL.{port}");
        let place = format!("connection to server on socket \"{path}\"");
        return match UnixStream::connect(&path) {
            Ok(s) => Ok((Stream::Unix(s), place)),
            Err(e) => Err(PgError::Connect(format!(
                "{place} failed: {e}\n\tIs the server running locally and accepting connections on that socket?\n"
            ))),
        };
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = (bare, port)
        .to_socket_addrs()
        .map_err(|e| {
            let why = e.to_string();
            let why = why
                .strip_prefix("failed to lookup address information: ")
                .unwrap_or(&why);
            PgError::Connect(format!(
                "could not translate host name \"{host}\" to address: {why}\n"
            ))
        })?
        .collect();
    let mut last = String::from("no address");
    let mut place = String::new();
    for addr in &addrs {
        place = format!(
            "connection to server at \"{host}\" ({}), port {port}",
            addr.ip()
        );
        match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok((Stream::Tcp(s), place));
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(PgError::Connect(format!(
        "{place} failed: {last}\n\tIs the server running on that host and accepting TCP/IP connections?\n"
    )))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL and PgBouncer speak it: no channel binding, the
/// user name left empty (the server takes it from the startup message). The password is used
/// as is: PostgreSQL falls back to the raw bytes too when SASLprep does not apply.
struct Scram {
    password: String,
    nonce: String,
    client_first_bare: String,
    auth_message: String,
    server_key: [u8; 32],
}

impl Scram {
    fn new(password: &str) -> Scram {
        Scram::with_nonce(password, STANDARD.encode(random_bytes::<18>()))
    }

    fn with_nonce(password: &str, nonce: String) -> Scram {
        Scram {
            password: password.to_string(),
            client_first_bare: format!("n=,r={nonce}"),
            nonce,
            auth_message: String::new(),
            server_key: [0; 32],
        }
    }

    fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    fn client_final(&mut self, server_first: &str) -> Result<String, String> {
        let attr = |name: &str| {
            server_first
                .split(',')
                .find_map(|kv| kv.strip_prefix(name))
                .ok_or_else(|| format!("malformed SCRAM message (attribute {name} missing)"))
        };
        let nonce = attr("r=")?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err("invalid SCRAM response (nonce mismatch)".into());
        }
        let salt = STANDARD
            .decode(attr("s=")?)
            .map_err(|_| "malformed SCRAM message (invalid salt)".to_string())?;
        let iterations: u32 = attr("i=")?
            .parse()
            .map_err(|_| "malformed SCRAM message (invalid iteration count)".to_string())?;
        let salted = hi(self.password.as_bytes(), &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        self.auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac(&stored_key, self.auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        self.server_key = hmac(&salted, b"Server Key");
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)))
    }

    fn verify_server(&self, server_final: &str) -> Result<(), String> {
        let expected = hmac(&self.server_key, self.auth_message.as_bytes());
        match server_final.strip_prefix("v=").map(|v| STANDARD.decode(v)) {
            Some(Ok(v)) if v == expected => Ok(()),
            _ => Err("invalid server signature in SCRAM exchange".into()),
        }
    }
}

/// PBKDF2-HMAC-SHA-256 with one output block: SCRAM's `Hi()`.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password, &[salt, &1u32.to_be_bytes()].concat());
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

/// Random bytes from the kernel; the nonce only needs to be unpredictable to the server.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_err()
    {
        // No /dev/urandom: fall back to the clock and the pid (still unique per attempt).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let seed = Sha256::digest(format!("{t}:{}", std::process::id()));
        for (i, b) in buf.iter_mut().enumerate() {
            *b = seed[i % 32];
        }
    }
    buf
}

/// `"` quoting for identifiers, as `quote_ident` does (always quoted).
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal that means the same whatever `standard_conforming_strings` says: an `E''`
/// string with `\` and `'` escaped. NUL cannot be carried; callers refuse it first.
pub fn literal(value: &str) -> String {
    format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_matches_rfc7677_test_vector() {
        // RFC 7677 section 3 (user "user", password "pencil"); PostgreSQL leaves n= empty,
        // so only the proof's inputs differ: check Hi, the keys and the signature directly.
        let mut s = Scram::with_nonce("pencil", "rOprNGfwEbeRWgbNEkqO".into());
        s.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
        let fin = s
            .client_final("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .unwrap();
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert!(s
            .verify_server("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .is_ok());
        assert!(s.verify_server("v=AAAA").is_err());
        assert!(s.client_final("r=someone-else,s=AAAA,i=1").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal(r"it's \ ok"), r"E'it''s \\ ok'");
    }

    #[test]
    fn only_the_two_libpq_texts_are_fatal() {
        let c = |m: &str| PgError::Connect(m.into()).is_fatal_auth_failure();
        assert!(c("connection to server at \"db\" (10.0.0.2), port 5432 failed: FATAL:  password authentication failed for user \"x\"\n"));
        assert!(c("connection to server at \"db\" (10.0.0.2), port 5432 failed: fe_sendauth: no password supplied\n"));
        assert!(!c("connection to server at \"pgbouncer\" (10.0.0.3), port 6432 failed: FATAL:  SASL authentication failed\n"));
        assert!(!c("connection to server at \"db\" (10.0.0.2), port 5432 failed: FATAL:  database \"x\" does not exist\n"));
        assert!(!c(
            "could not translate host name \"pgbouncer\" to address: Name or service not known\n"
        ));
    }

    #[test]
    fn error_and_row_messages() {
        let body = b"SERROR\0VERROR\0C42501\0Mpermission denied for table t\0Hhint\0\0";
        let e = parse_error(body);
        assert_eq!(
            (e.severity.as_str(), e.code.as_str(), e.message.as_str()),
            ("ERROR", "42501", "permission denied for table t")
        );
        assert_eq!((e.detail, e.hint.as_deref()), (None, Some("hint")));
        let mut row = 2u16.to_be_bytes().to_vec();
        row.extend_from_slice(&2i32.to_be_bytes());
        row.extend_from_slice(b"ab");
        row.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(parse_row(&row).unwrap(), vec![Some("ab".into()), None]);
        assert!(parse_row(&row[..5]).is_err());
    }

    #[test]
    fn an_unresolvable_host_reads_like_libpq() {
        let uri = DbUri::parse("postgres://u:pw@no-such-host.invalid:6432/d").unwrap();
        match Conn::connect(&uri, "test") {
            Err(PgError::Connect(m)) => {
                assert!(
                    m.starts_with(
                        "could not translate host name \"no-such-host.invalid\" to address: "
                    ),
                    "{m}"
                );
                assert!(!m.contains("pw"));
            }
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn a_refused_connection_reads_like_libpq() {
        // A port nobody listens on: bind one, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let uri = DbUri::parse(&format!("postgres://u:pw@127.0.0.1:{port}/d")).unwrap();
        match Conn::connect(&uri, "test") {
            Err(e @ PgError::Connect(_)) => {
                assert!(!e.is_fatal_auth_failure());
                let PgError::Connect(m) = e else {
                    unreachable!()
                };
                assert!(
                    m.starts_with(&format!(
                        "connection to server at \"127.0.0.1\" (127.0.0.1), port {port} failed: "
                    )),
                    "{m}"
                );
            }
            other => panic!("{:?}", other.err()),
        }
    }
}
