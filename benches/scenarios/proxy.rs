//! A counting proxy in front of the Docker socket: the manager is started with
//! `DOCKER_HOST=unix://<bench>/docker.sock`, and every request it makes is counted by method
//! and path (ids replaced by `{id}`, the API version dropped) before it is forwarded.
//!
//! Only the request direction is parsed (head, then a `Content-Length` or chunked body);
//! responses, including the endless events stream, are copied through untouched, and only
//! their first bytes are timed: how long the daemon took to answer each request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// The daemon behind the proxy: `DOCKER_HOST` when it names a unix socket (a private daemon),
/// else the machine's.
fn docker_socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|host| host.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

/// What the proxy saw since the last `take`.
#[derive(Debug, Clone, Default)]
pub struct Calls {
    /// `METHOD /normalized/path` -> count.
    pub by_kind: BTreeMap<String, u64>,
    /// Every request that changes something (not GET), with the real path.
    pub writes: Vec<String>,
    /// `METHOD /normalized/path` -> for each request, from its first byte forwarded to the
    /// daemon's first byte back (a followed log or the events stream: to its headers).
    pub answered_in: BTreeMap<String, Vec<Duration>>,
}

impl Calls {
    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    pub fn count(&self, kind: &str) -> u64 {
        self.by_kind.get(kind).copied().unwrap_or(0)
    }

    /// How long the daemon took to answer the requests of `kind`, in order.
    pub fn answered_in(&self, kind: &str) -> &[Duration] {
        self.answered_in.get(kind).map_or(&[], Vec::as_slice)
    }

    /// `GET /containers/json ×2, POST /containers/{id}/kill ×1`.
    pub fn describe(&self) -> String {
        if self.by_kind.is_empty() {
            return "none".into();
        }
        self.by_kind
            .iter()
            .map(|(k, n)| format!("`{k}` ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub struct Proxy {
    pub socket: PathBuf,
    calls: Arc<Mutex<Calls>>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Proxy {
    pub fn start(socket: &Path) -> std::io::Result<Proxy> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        let calls = Arc::new(Mutex::new(Calls::default()));
        let counted = calls.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, counted.clone()));
            }
        });
        Ok(Proxy {
            socket: socket.to_owned(),
            calls,
            task,
        })
    }

    /// `DOCKER_HOST` for a client that should go through the proxy.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The calls since the last `take`, and start counting afresh.
    pub fn take(&self) -> Calls {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

async fn serve(client: UnixStream, calls: Arc<Mutex<Calls>>) {
    let Ok(upstream) = UnixStream::connect(docker_socket()).await else {
        return;
    };
    let (client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    // The request forwarded last and when, until the daemon's first byte back (clients of
    // the Docker API send one request at a time on a connection).
    let asked: Arc<Mutex<Option<(String, Instant)>>> = Arc::default();
    let responses = tokio::spawn({
        let (asked, calls) = (asked.clone(), calls.clone());
        async move {
            let mut buffer = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = upstream_read.read(&mut buffer).await {
                if let Some((kind, at)) = asked.lock().unwrap().take() {
                    let mut calls = calls.lock().unwrap();
                    calls
                        .answered_in
                        .entry(kind)
                        .or_default()
                        .push(at.elapsed());
                }
                if client_write.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
            let _ = client_write.shutdown().await;
        }
    });
    let _ = forward_requests(
        BufReader::new(client_read),
        &mut upstream_write,
        &calls,
        &asked,
    )
    .await;
    let _ = upstream_write.shutdown().await;
    let _ = responses.await;
}

async fn forward_requests<R, W>(
    mut reader: BufReader<R>,
    upstream: &mut W,
    calls: &Mutex<Calls>,
    asked: &Mutex<Option<(String, Instant)>>,
) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let mut head = Vec::new();
        let mut content_length = 0u64;
        let mut chunked = false;
        let mut upgrade = false;
        let mut request_line = String::new();
        loop {
            let mut line = Vec::new();
            if reader.read_until(b'\n', &mut line).await? == 0 {
                return Ok(());
            }
            head.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end();
            if request_line.is_empty() {
                request_line = text.to_owned();
                continue;
            }
            if text.is_empty() {
                break;
            }
            if let Some((name, value)) = text.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                match name.as_str() {
                    "content-length" => content_length = value.parse().unwrap_or(0),
                    "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                    "upgrade" => upgrade = true,
                    _ => {}
                }
            }
        }
        if let Some(kind) = record(calls, &request_line) {
            *asked.lock().unwrap() = Some((kind, Instant::now()));
        }
        upstream.write_all(&head).await?;
        if upgrade {
            tokio::io::copy(&mut reader, upstream).await?;
            return Ok(());
        }
        if chunked {
            loop {
                let mut size_line = Vec::new();
                reader.read_until(b'\n', &mut size_line).await?;
                upstream.write_all(&size_line).await?;
                let size_text = String::from_utf8_lossy(&size_line);
                let size =
                    u64::from_str_radix(size_text.trim().split(';').next().unwrap_or("0"), 16)
                        .unwrap_or(0);
                if size == 0 {
                    // Trailers, then the blank line.
                    loop {
                        let mut line = Vec::new();
                        reader.read_until(b'\n', &mut line).await?;
                        upstream.write_all(&line).await?;
                        if line == b"\r\n" || line.is_empty() {
                            break;
                        }
                    }
                    break;
                }
                copy_exact(&mut reader, upstream, size + 2).await?;
            }
        } else if content_length > 0 {
            copy_exact(&mut reader, upstream, content_length).await?;
        }
        upstream.flush().await?;
    }
}

async fn copy_exact<R, W>(reader: &mut R, writer: &mut W, n: u64) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let copied = tokio::io::copy(&mut reader.take(n), writer).await?;
    if copied < n {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Counts the request; returns its kind.
fn record(calls: &Mutex<Calls>, request_line: &str) -> Option<String> {
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return None;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let path = strip_version(path);
    let kind = format!("{method} {}{}", normalize(path), variant(path, query));
    let mut calls = calls.lock().unwrap();
    *calls.by_kind.entry(kind.clone()).or_default() += 1;
    if method != "GET" && method != "HEAD" {
        calls.writes.push(format!("{method} {path}"));
    }
    Some(kind)
}

/// Calls of one path that cost the daemon differently: a list filtered by id (a lookup, one
/// container) against a full list; a log followed against one read.
fn variant(path: &str, query: &str) -> &'static str {
    let query = query.replace("%22", "\"").replace("%3A", ":");
    if path.ends_with("/containers/json") && query.contains("\"id\":") {
        " (by id)"
    } else if path.ends_with("/logs") && query.contains("follow=true") {
        " (follow)"
    } else {
        ""
    }
}

/// `/v1.41/containers/json` -> `/containers/json`.
fn strip_version(path: &str) -> &str {
    let Some(rest) = path.strip_prefix("/v") else {
        return path;
    };
    match rest.find('/') {
        Some(slash)
            if rest[..slash]
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.') =>
        {
            &rest[slash..]
        }
        _ => path,
    }
}

/// Replaces the object id after `containers`, `networks`, `exec`, `images` with `{id}`.
fn normalize(path: &str) -> String {
    const VERBS: [&str; 3] = ["json", "create", "prune"];
    let segments: Vec<&str> = path.split('/').collect();
    let mut out = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let after_collection = i > 0
            && matches!(
                segments[i - 1],
                "containers" | "networks" | "exec" | "images"
            )
            && i == 2;
        if after_collection && !VERBS.contains(segment) {
            out.push("{id}");
        } else {
            out.push(segment);
        }
    }
    out.join("/")
}
