//! [`CaddyAdmin`] over HTTP/1.1 to Caddy's admin API, with hyper's client.
//!
//! `GET /id/launchdb-projects` reads the slot; its ETag comes as an `ETag` header or, in Caddy
//! 2.6.2, as an HTTP trailer after the chunked body, which hyper hands over with the body.
//! `PATCH /id/launchdb-projects/handle/0/routes` replaces the list, always with `If-Match`.
//! Every request is bounded by [`REQUEST_TIMEOUT`]. Caddy's answers become [`CaddyError`] in
//! [`map_status`] and [`map_transport`], nowhere else.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE, ETAG, IF_MATCH};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::{AdminUrl, CaddyAdmin, CaddyError, Etag, Routes, SLOT_ID};

/// The longest wait for one whole answer (connect, send, read the body) by default. A sync
/// makes at most four requests (GET, PATCH, and again after a 412), so it can take up to four
/// times this while Caddy hangs (a refused connection fails at once).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The most of Caddy's error message kept in a [`CaddyError::Rejected`].
const MAX_MESSAGE: usize = 300;

/// Caddy's admin API at one address.
#[derive(Clone, Debug)]
pub struct HttpCaddy {
    client: Client<HttpConnector, Full<Bytes>>,
    base: AdminUrl,
    timeout: Duration,
}

impl HttpCaddy {
    /// Each request bounded by [`REQUEST_TIMEOUT`].
    pub fn new(base: &AdminUrl) -> HttpCaddy {
        HttpCaddy::with_timeout(base, REQUEST_TIMEOUT)
    }

    /// Each request (connect, send, read the whole answer) bounded by `timeout`.
    pub fn with_timeout(base: &AdminUrl, timeout: Duration) -> HttpCaddy {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        // The manager talks to Caddy a few times a minute: one idle connection is plenty.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build(connector);
        HttpCaddy {
            client,
            base: base.clone(),
            timeout,
        }
    }

    fn slot_url(&self) -> String {
        format!("{}/id/{SLOT_ID}", self.base)
    }

    /// Sends `request` and reads the whole answer, within the timeout.
    async fn send(&self, request: Request<Full<Bytes>>) -> Result<Answer, CaddyError> {
        let exchange = async {
            let response: Response<Incoming> = self
                .client
                .request(request)
                .await
                .map_err(|e| map_transport(&self.base, &e))?;
            let (parts, body) = response.into_parts();
            let collected = body
                .collect()
                .await
                .map_err(|e| map_transport(&self.base, &e))?;
            let trailers = collected.trailers().cloned();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                trailers,
                body: collected.to_bytes(),
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                CaddyError::Unavailable(format!(
                    "{}: no answer within {:?}",
                    self.base, self.timeout
                ))
            })?
    }
}

/// One whole answer.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    trailers: Option<HeaderMap>,
    body: Bytes,
}

impl Answer {
    /// The `ETag` header, or else the `ETag` trailer (Caddy 2.6.2 sends it as a trailer).
    fn etag(&self) -> Option<Etag> {
        let value = self
            .headers
            .get(ETAG)
            .or_else(|| self.trailers.as_ref()?.get(ETAG))?;
        Some(Etag::new(value.to_str().ok()?))
    }
}

impl CaddyAdmin for HttpCaddy {
    async fn current(&self) -> Result<(Value, Etag), CaddyError> {
        let request = Request::get(self.slot_url())
            .body(Full::default())
            .map_err(|e| bug(&e))?;
        let answer = self.send(request).await?;
        if answer.status != StatusCode::OK {
            return Err(map_status(answer.status, &answer.body));
        }
        let etag = answer.etag().ok_or_else(|| CaddyError::Rejected {
            status: answer.status.as_u16(),
            message: "the answer carries no ETag".into(),
        })?;
        let slot: Value =
            serde_json::from_slice(&answer.body).map_err(|e| CaddyError::Rejected {
                status: answer.status.as_u16(),
                message: format!("the slot is not JSON: {e}"),
            })?;
        Ok((slot_routes(&slot)?, etag))
    }

    async fn replace(&self, routes: &Routes, etag: &Etag) -> Result<(), CaddyError> {
        let if_match = HeaderValue::from_str(etag.as_str()).map_err(|_| CaddyError::Rejected {
            status: 0,
            message: "the ETag is not a valid header value".into(),
        })?;
        let body = serde_json::to_vec(&routes.to_json()).map_err(|e| bug(&e))?;
        let request = Request::builder()
            .method(Method::PATCH)
            .uri(format!("{}/handle/0/routes", self.slot_url()))
            .header(CONTENT_TYPE, "application/json")
            .header(IF_MATCH, if_match)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| bug(&e))?;
        let answer = self.send(request).await?;
        if answer.status == StatusCode::OK {
            Ok(())
        } else {
            Err(map_status(answer.status, &answer.body))
        }
    }
}

/// The project routes inside the slot `{"@id": .., "handle": [{"handler": "subroute",
/// "routes": [..]}]}`; a subroute without `routes` has none.
fn slot_routes(slot: &Value) -> Result<Value, CaddyError> {
    let subroute = &slot["handle"][0];
    if subroute["handler"] != "subroute" {
        return Err(CaddyError::Rejected {
            status: 200,
            message: format!("the route {SLOT_ID:?} does not start with a subroute handler"),
        });
    }
    match &subroute["routes"] {
        Value::Null => Ok(Value::Array(Vec::new())),
        routes @ Value::Array(_) => Ok(routes.clone()),
        _ => Err(CaddyError::Rejected {
            status: 200,
            message: format!("the subroute of {SLOT_ID:?} has a `routes` that is not a list"),
        }),
    }
}

/// Every answer but the expected 200, as a [`CaddyError`]. Caddy's errors are
/// `{"error": "..."}`; the message is kept, shortened.
pub(crate) fn map_status(status: StatusCode, body: &[u8]) -> CaddyError {
    if status == StatusCode::PRECONDITION_FAILED {
        return CaddyError::Conflict;
    }
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    let message = match message.char_indices().nth(MAX_MESSAGE) {
        Some((cut, _)) => format!("{}...", &message[..cut]),
        None => message,
    };
    CaddyError::Rejected {
        status: status.as_u16(),
        message,
    }
}

/// A request that got no whole answer: refused, unresolved, reset, cut mid-body.
fn map_transport(base: &AdminUrl, error: &(dyn std::error::Error + 'static)) -> CaddyError {
    // hyper's own message ("client error (Connect)") names only the stage; the sources say why.
    let mut message = format!("{base}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    CaddyError::Unavailable(message)
}

/// A request this module built was malformed: a defect here, reported rather than panicking.
fn bug(error: &dyn std::fmt::Display) -> CaddyError {
    CaddyError::Rejected {
        status: 0,
        message: format!("could not build the request: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn statuses() {
        assert_eq!(
            map_status(
                StatusCode::PRECONDITION_FAILED,
                br#"{"error":"If-Match header did not match current config hash"}"#
            ),
            CaddyError::Conflict
        );
        assert_eq!(
            map_status(
                StatusCode::INTERNAL_SERVER_ERROR,
                br#"{"error":"[/config/apps] key already exists: routes"}"#
            ),
            CaddyError::Rejected {
                status: 500,
                message: "[/config/apps] key already exists: routes".into()
            }
        );
        assert_eq!(
            map_status(StatusCode::BAD_GATEWAY, b" bad gateway\n"),
            CaddyError::Rejected {
                status: 502,
                message: "bad gateway".into()
            }
        );
        let long = "é".repeat(1000);
        let CaddyError::Rejected { message, .. } =
            map_status(StatusCode::BAD_REQUEST, long.as_bytes())
        else {
            panic!("not rejected");
        };
        assert_eq!(message.chars().count(), MAX_MESSAGE + 3);
    }

    #[test]
    fn slot_shapes() {
        let slot = json!({"@id": SLOT_ID, "handle": [{"handler": "subroute", "routes": [1]}]});
        assert_eq!(slot_routes(&slot).unwrap(), json!([1]));
        let slot = json!({"@id": SLOT_ID, "handle": [{"handler": "subroute"}]});
        assert_eq!(slot_routes(&slot).unwrap(), json!([]));
        let slot = json!({"@id": SLOT_ID, "handle": [{"handler": "static_response"}]});
        assert!(slot_routes(&slot).is_err());
        let slot = json!({"@id": SLOT_ID, "handle": [{"handler": "subroute", "routes": {}}]});
        assert!(slot_routes(&slot).is_err());
    }

    /// A one-shot server on a free local port: returns what it answers with `response`,
    /// and the request it read.
    async fn serve_once(response: String) -> (AdminUrl, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let request = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut read = 0;
            // Headers, then the body its Content-Length announces.
            loop {
                let n = socket.read(&mut buf[read..]).await.unwrap();
                read += n;
                let text = String::from_utf8_lossy(&buf[..read]).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |l| l.parse::<usize>().unwrap());
                    if read >= end + 4 + length || n == 0 {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            socket.write_all(response.as_bytes()).await.unwrap();
            socket.shutdown().await.unwrap();
            String::from_utf8_lossy(&buf[..read]).into_owned()
        });
        let url = format!("http://127.0.0.1:{port}").parse().unwrap();
        (url, request)
    }

    #[tokio::test]
    async fn reads_the_etag_trailer_as_caddy_2_6_2_sends_it() {
        let body = r#"{"@id":"launchdb-projects","handle":[{"handler":"subroute","routes":[]}]}"#;
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTrailer: ETag\r\n\
             Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\n\r\n0\r\n\
             Etag: \"/config/apps/http/servers/launchdb/routes/0 3e877bb9\"\r\n\r\n",
            body.len() + 1
        );
        let (url, request) = serve_once(response).await;
        let (routes, etag) = HttpCaddy::new(&url).current().await.unwrap();
        assert_eq!(routes, json!([]));
        assert_eq!(
            etag.as_str(),
            "\"/config/apps/http/servers/launchdb/routes/0 3e877bb9\""
        );
        let request = request.await.unwrap();
        assert!(
            request.starts_with("GET /id/launchdb-projects HTTP/1.1\r\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn patches_with_if_match() {
        let (url, request) =
            serve_once("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".into()).await;
        let routes = Routes::new([(
            crate::spec::ProjectId::parse("p").unwrap(),
            super::super::RouteTarget::Ready,
        )]);
        let etag = Etag::new("\"/config/x 1\"");
        HttpCaddy::new(&url).replace(&routes, &etag).await.unwrap();
        let request = request.await.unwrap();
        assert!(
            request.starts_with("PATCH /id/launchdb-projects/handle/0/routes HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("\r\nif-match: \"/config/x 1\"\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\ncontent-type: application/json\r\n"));
        let body = request.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(
            serde_json::from_str::<Value>(body).unwrap(),
            routes.to_json()
        );
    }

    #[tokio::test]
    async fn stale_etag_is_a_conflict_and_a_closed_port_unavailable() {
        let body = r#"{"error":"If-Match header did not match current config hash"}"#;
        let (url, _request) = serve_once(format!(
            "HTTP/1.1 412 Precondition Failed\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ))
        .await;
        let error = HttpCaddy::new(&url)
            .replace(&Routes::default(), &Etag::new("\"/config/x 1\""))
            .await;
        assert_eq!(error, Err(CaddyError::Conflict));

        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let url: AdminUrl = format!("http://127.0.0.1:{port}").parse().unwrap();
        let error = HttpCaddy::new(&url).current().await;
        assert!(
            matches!(&error, Err(CaddyError::Unavailable(m)) if m.contains("refused")),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn no_answer_in_time_is_unavailable() {
        // Accepts (the kernel does, from the backlog) but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url: AdminUrl = format!("http://127.0.0.1:{port}").parse().unwrap();
        tokio::time::pause();
        let error = HttpCaddy::new(&url).current().await;
        assert!(
            matches!(&error, Err(CaddyError::Unavailable(_))),
            "{error:?}"
        );
        drop(listener);
    }
}
