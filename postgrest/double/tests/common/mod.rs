//! Helpers shared by the double's integration tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SECRET: &str = "0123456789abcdef0123456789abcdef";
pub const OTHER_SECRET: &str = "fedcba9876543210fedcba9876543210";

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `GET http://127.0.0.1:<port><path>`, optionally with a bearer token.
pub fn get(port: u16, path: &str, token: Option<&str>) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {raw:.80}")))?;
    Ok(Reply {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    })
}

pub fn status(port: u16, path: &str, token: Option<&str>) -> Option<u16> {
    get(port, path, token).ok().map(|r| r.status)
}

pub fn token(secret: &str, claims: serde_json::Value) -> String {
    postgrest_double::jwt::mint(secret, &claims)
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_postgrest")
}

/// A scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "pgrst-double-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

/// Writes `text` into a FIFO from a thread (the write blocks until the reader opens it).
pub fn feed_fifo(path: &Path, text: String) -> std::thread::JoinHandle<()> {
    let path = path.to_path_buf();
    std::thread::spawn(move || std::fs::write(&path, text).unwrap())
}

/// A running process whose stderr is collected; killed on drop.
pub struct Proc {
    pub child: Child,
    pub stderr: Arc<Mutex<String>>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc { child, stderr }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn wait_log(&self, what: &str, timeout: Duration) {
        wait_until(&format!("{what:?} in the log"), timeout, || {
            self.log().contains(what).then_some(())
        });
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the exit; the status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        wait_until("the process to exit", timeout, || {
            self.child.try_wait().unwrap()
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config file body for the double.
pub fn config_text(db_uri: &str, port: u16, admin: u16, secret: &str, extra: &str) -> String {
    format!(
        "db-uri = \"{db_uri}\"\nserver-host = \"127.0.0.1\"\nserver-port = {port}\nadmin-server-port = {admin}\n\
         jwt-secret = \"{secret}\"\njwt-aud = \"authenticated\"\ndb-anon-role = \"anon\"\n{extra}"
    )
}
