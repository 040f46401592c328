//! PostgREST's readiness: one plain `GET /ready` to a container's admin port.
//!
//! The API answers a spawn only once PostgREST itself says it serves (`/ready`: logged in to
//! its database, schema cache loaded), not when Docker's healthcheck (every 30 s, a process
//! per container) gets round to it; the loop probes `/ready` to tell serving containers from
//! the others. The request is a few
//! bytes of HTTP/1.1 over a `TcpStream`; only the status line is read, so no HTTP client crate
//! is needed for it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a probe did not see a ready PostgREST.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot reach {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("no answer from {0} within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("{0} answered {1}")]
    Status(SocketAddr, u16),
    #[error("{0} did not answer HTTP")]
    Malformed(SocketAddr),
}

/// The longest status line we read; PostgREST's is about 20 bytes.
const MAX_STATUS_LINE: usize = 256;

/// `Ok` when `http://<ip>:<port>/ready` answers 200 within `timeout`: PostgREST serves.
pub async fn ready(ip: IpAddr, port: u16, timeout: Duration) -> Result<(), ProbeError> {
    ok(ip, port, "/ready", timeout).await
}

async fn ok(ip: IpAddr, port: u16, path: &str, timeout: Duration) -> Result<(), ProbeError> {
    let addr = SocketAddr::new(ip, port);
    match tokio::time::timeout(timeout, get_status(addr, path)).await {
        Ok(Ok(200)) => Ok(()),
        Ok(Ok(status)) => Err(ProbeError::Status(addr, status)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ProbeError::Timeout(addr, timeout)),
    }
}

async fn get_status(addr: SocketAddr, path: &str) -> Result<u16, ProbeError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| ProbeError::Connect(addr, e))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| ProbeError::Connect(addr, e))?;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 128];
    while !buf.contains(&b'\n') && buf.len() < MAX_STATUS_LINE {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| ProbeError::Connect(addr, e))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    parse_status_line(&buf).ok_or(ProbeError::Malformed(addr))
}

/// `HTTP/1.1 200 OK` -> 200.
fn parse_status_line(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_ascii_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?;
    (status.len() == 3).then_some(())?;
    status.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503 x\r\n\r\n"), Some(503));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 20000 OK\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    /// A one-shot server answering with `response`, on a free local port.
    async fn serve_once(response: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = socket.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"GET /ready HTTP/1.1\r\n"));
            socket.write_all(response.as_bytes()).await.unwrap();
        });
        port
    }

    #[tokio::test]
    async fn ready_and_not_ready() {
        let localhost: IpAddr = [127, 0, 0, 1].into();
        let port = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        ready(localhost, port, Duration::from_secs(2))
            .await
            .unwrap();

        let port = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let error = ready(localhost, port, Duration::from_secs(2)).await;
        assert!(
            matches!(error, Err(ProbeError::Status(_, 503))),
            "{error:?}"
        );

        // Nothing listens on a port we just closed.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let error = ready(localhost, port, Duration::from_secs(2)).await;
        assert!(matches!(error, Err(ProbeError::Connect(..))), "{error:?}");
    }
}
