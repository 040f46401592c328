//! A small HTTP/1.1 client on one keep-alive connection, a loopback load generator built on it,
//! and HS256 tokens for PostgREST.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct Conn {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(stream),
            host: addr.to_string(),
        })
    }

    /// Sends one request and reads the whole response: (status, body).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() || method != "GET" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;

        let invalid =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status: u16 = line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid("no status line"))?;
        let (mut length, mut chunked) = (None, false);
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let text = line.trim_end();
            if text.is_empty() {
                break;
            }
            if let Some((name, value)) = text.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse::<usize>().ok(),
                    "transfer-encoding" => chunked = value.trim().eq_ignore_ascii_case("chunked"),
                    _ => {}
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.stream.read_line(&mut line).await?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| invalid("bad chunk size"))?;
                if size == 0 {
                    line.clear();
                    self.stream.read_line(&mut line).await?;
                    break;
                }
                let start = body.len();
                body.resize(start + size + 2, 0);
                self.stream.read_exact(&mut body[start..]).await?;
                body.truncate(start + size);
            }
        } else if let Some(length) = length {
            body.resize(length, 0);
            self.stream.read_exact(&mut body).await?;
        }
        Ok((status, body))
    }
}

/// The result of a load run.
#[derive(Debug, Clone)]
pub struct Load {
    pub requests: usize,
    pub errors: usize,
    pub elapsed: Duration,
    /// Per-request latencies, sorted, in milliseconds.
    pub latencies_ms: Vec<f64>,
}

impl Load {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// `requests` GETs of `path` over `conns` keep-alive connections, as fast as they answer.
pub async fn load(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    requests: usize,
    conns: usize,
) -> std::io::Result<Load> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut workers = tokio::task::JoinSet::new();
    let started = Instant::now();
    for worker in 0..conns {
        let share = requests / conns + usize::from(worker < requests % conns);
        let (path, headers) = (path.to_owned(), headers.clone());
        workers.spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let (mut latencies, mut errors) = (Vec::with_capacity(share), 0usize);
            for _ in 0..share {
                let sent = Instant::now();
                match conn.request("GET", &path, &headers, None).await {
                    Ok((200, _)) => latencies.push(sent.elapsed().as_secs_f64() * 1000.0),
                    Ok(_) => errors += 1,
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, std::io::Error>((latencies, errors))
        });
    }
    let mut result = Load {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies_ms: Vec::with_capacity(requests),
    };
    while let Some(done) = workers.join_next().await {
        let (latencies, errors) = done.expect("a load worker panicked")?;
        result.requests += latencies.len() + errors;
        result.errors += errors;
        result.latencies_ms.extend(latencies);
    }
    result.elapsed = started.elapsed();
    result.latencies_ms.sort_by(f64::total_cmp);
    Ok(result)
}

/// An HS256 JWT PostgREST accepts: role `authenticated`, audience `authenticated`, valid an hour.
pub fn token(secret: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(
        format!(r#"{{"role":"authenticated","aud":"authenticated","exp":{exp}}}"#).as_bytes(),
    );
    let signing_input = format!("{header}.{claims}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}
