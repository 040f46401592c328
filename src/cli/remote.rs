//! Asking the running manager: `status --api` reads what only its memory holds (readiness
//! from its own probe, each project's events). A plain HTTP/1.1 GET over a `TcpStream`, like
//! `probe.rs`: one request, `Connection: close`, the body read to the end. Only `http://`:
//! the API listens on loopback or a private network.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{failed, usage, CliError};
use crate::args::ApiArgs;

const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read: a list of a few thousand projects.
const MAX_BODY: u64 = 16 << 20;

/// `GET path` on the manager's API with the key; the JSON body of a 200, or the error the API
/// answered with.
pub(super) fn get(api: &ApiArgs, path: &str) -> Result<serde_json::Value, CliError> {
    let url = api.url.as_deref().unwrap_or_default();
    let key = api
        .key
        .as_deref()
        .ok_or_else(|| usage("--api needs the key in INTERNAL_API_KEY (or --api-key)"))?;
    let authority = url
        .strip_prefix("http://")
        .ok_or_else(|| usage(format!("--api {url}: give an http:// address")))?
        .trim_end_matches('/');
    if authority.contains(['/', '@', ' ', '\r', '\n']) || key.contains(['\r', '\n']) {
        return Err(usage(format!("--api {url}: give http://host:port only")));
    }
    let unreachable = |e: std::io::Error| failed(format!("the manager at {url}: {e}"));
    let addr = authority
        .to_socket_addrs()
        .map_err(unreachable)?
        .next()
        .ok_or_else(|| failed(format!("the manager at {url}: no address")))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(unreachable)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nX-Internal-Key: {key}\r\n\
         Accept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(unreachable)?;
    let mut response = Vec::new();
    stream
        .take(MAX_BODY)
        .read_to_end(&mut response)
        .map_err(unreachable)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| failed(format!("the manager at {url}: no HTTP answer")))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    // axum answers these small bodies with a length, never chunked.
    let body: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    match status {
        200 => Ok(body),
        404 => Err(CliError {
            code: 3,
            message: body["message"].as_str().unwrap_or("not found").to_owned(),
        }),
        _ => Err(failed(format!(
            "the manager at {url} answered {status}: {}",
            body["message"].as_str().unwrap_or("(no reason given)")
        ))),
    }
}
