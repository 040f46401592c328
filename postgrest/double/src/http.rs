//! A deliberately tiny HTTP/1.x server: one short-lived thread per connection, one request per
//! connection (`Connection: close`), `Content-Length` responses. Enough for health probes and
//! test requests, nothing more.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// A request head is small; anything bigger is not one of our clients.
const MAX_HEAD: usize = 16 * 1024;
/// Bodies are read and dropped (closing a socket with unread data resets the connection, and
/// the client may then lose our response); past this size we just give up on the connection.
const MAX_BODY: u64 = 1024 * 1024;
/// Per-connection threads need very little stack; containers run with a small pids limit.
const THREAD_STACK: usize = 128 * 1024;

pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// Header lookup, case-insensitive as HTTP requires.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", "application/json; charset=utf-8".into())],
            body: body.to_string().into_bytes(),
        }
    }

    pub fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        409 => "Conflict",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Accepts forever on its own thread; each connection gets a thread of its own.
pub fn spawn_server(listener: TcpListener, name: &'static str, handler: Handler) {
    thread::Builder::new()
        .name(name.into())
        .stack_size(THREAD_STACK)
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let handler = handler.clone();
                // If no thread can be had (pids limit), the connection is simply dropped.
                let _ = thread::Builder::new()
                    .stack_size(THREAD_STACK)
                    .spawn(move || serve(stream, &*handler));
            }
        })
        .expect("cannot start the accept thread");
}

fn serve(stream: TcpStream, handler: &(dyn Fn(&Request) -> Response + Sync)) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(&stream);
    let (response, is_head) = match read_request(&mut reader) {
        Ok(Some(request)) => (handler(&request), request.method == "HEAD"),
        Ok(None) => return, // the client went away, or sent an oversized body
        Err(()) => (Response::empty(400), false),
    };
    let _ = write_response(&stream, &response, is_head);
}

fn read_line(reader: &mut impl BufRead, budget: &mut usize) -> Result<String, ()> {
    let mut line = Vec::new();
    let n = reader
        .take(*budget as u64)
        .read_until(b'\n', &mut line)
        .map_err(|_| ())?;
    *budget -= n;
    if !line.ends_with(b"\n") {
        return Err(()); // EOF or the head is too big
    }
    let line = String::from_utf8(line).map_err(|_| ())?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// `Ok(None)`: nothing to answer. `Err`: answer 400.
fn read_request(reader: &mut impl BufRead) -> Result<Option<Request>, ()> {
    let mut budget = MAX_HEAD;
    let request_line = match read_line(reader, &mut budget) {
        Ok(line) => line,
        Err(()) if budget == MAX_HEAD => return Ok(None), // closed without a byte
        Err(()) => return Err(()),
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(());
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Err(());
    }
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader, &mut budget)?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').ok_or(())?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let request = Request {
        method: method.to_string(),
        path: target.split('?').next().unwrap_or("").to_string(),
        headers,
    };
    let length: u64 = match request.header("Content-Length") {
        None => 0,
        Some(v) => v.parse().map_err(|_| ())?,
    };
    if length > MAX_BODY {
        return Ok(None);
    }
    std::io::copy(&mut reader.take(length), &mut std::io::sink()).map_err(|_| ())?;
    Ok(Some(request))
}

fn write_response(mut stream: &TcpStream, r: &Response, is_head: bool) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {} {}\r\n", r.status, reason(r.status));
    for (name, value) in &r.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        r.body.len()
    ));
    let mut bytes = out.into_bytes();
    if !is_head {
        bytes.extend_from_slice(&r.body);
    }
    stream.write_all(&bytes)?;
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Option<Request>, ()> {
        read_request(&mut BufReader::new(raw.as_bytes()))
    }

    #[test]
    fn requests() {
        let r = parse("GET /live?x=1 HTTP/1.0\r\nauthorization: Bearer t\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/live"));
        assert_eq!(r.header("Authorization"), Some("Bearer t"));
        assert!(parse("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
            .unwrap()
            .is_some());
        assert!(parse("").unwrap().is_none());
        assert!(parse("GET / HTTP/2\r\n\r\n").is_err());
        assert!(parse("GET /\r\n\r\n").is_err());
        assert!(parse("GET / HTTP/1.1\r\nno colon\r\n\r\n").is_err());
        assert!(parse(&format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        ))
        .is_err());
    }
}
