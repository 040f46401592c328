//! Caddy's project routes: the desired list, a narrow trait over Caddy's admin API, its HTTP
//! implementation, an in-memory fake, and [`RouteSync`], which keeps Caddy equal to the list.
//!
//! Caddy's static config (`deploy/caddy/caddy.json`) holds one route with `@id`
//! [`SLOT_ID`], a `subroute` whose `routes` are this module's to fill: one route per project,
//! `/db/<id>` and `/db/<id>/*`, the prefix stripped, proxied to `postgrest-<id>:3000`, or a
//! JSON 503 while the project is not ready. Unknown paths fall through to the static 404.
//! The whole list is replaced in one `PATCH`, guarded by `If-Match` with the ETag of the `GET`
//! that showed it differed (deploy/README.md, "The contract for the manager").
//!
//! Only `admin.rs` speaks HTTP; Caddy's status codes become [`CaddyError`] in exactly one
//! function there, `admin::map_status`.

pub mod admin;
pub mod fake;
mod keep;
mod sync;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::str::FromStr;

use serde_json::{json, Value};

use crate::spec::ProjectId;

pub use admin::HttpCaddy;
pub use keep::{desired_routes, keep_in_step, RouteState};
pub use sync::{RouteSync, SyncStatus};

/// The `@id` of the static route whose subroute holds the project routes.
pub const SLOT_ID: &str = "launchdb-projects";

/// The port PostgREST serves on inside its container; the admin port is never routed.
pub const POSTGREST_PORT: u16 = 3000;

/// What a project's route should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    /// Proxy to the project's container by its name, `postgrest-<id>`.
    Ready,
    /// Proxy to this host: a container's own network alias. A blue/green replacement moves
    /// the route from the old container's alias to the new one's in one update; the name
    /// `postgrest-<id>` moves only later, with the rename.
    ReadyAt { host: String },
    /// Answer 503 with `{"error":"not_ready","message":<reason>}`. The reason is shown to
    /// anyone who asks through Caddy, so it must never carry a secret; it should also be stable
    /// (no timestamps or counters): every change of it is a PATCH and a Caddy reload.
    NotReady { reason: String },
}

impl RouteTarget {
    /// The host a proxying route dials; `None` for a 503.
    pub fn host(&self, id: &ProjectId) -> Option<String> {
        match self {
            RouteTarget::Ready => Some(id.container_name()),
            RouteTarget::ReadyAt { host } => Some(host.clone()),
            RouteTarget::NotReady { .. } => None,
        }
    }

    /// The target that proxies to `host`: by name when that is the project's name.
    pub fn proxy(id: &ProjectId, host: Option<&str>) -> RouteTarget {
        match host {
            Some(host) if host != id.container_name() => RouteTarget::ReadyAt {
                host: host.to_owned(),
            },
            _ => RouteTarget::Ready,
        }
    }
}

/// The whole desired route list, one entry per project, sorted by project id; equality means
/// "nothing to send".
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Routes(Vec<(ProjectId, RouteTarget)>);

impl Routes {
    /// The list for `targets`; a project named twice keeps its last target.
    pub fn new(targets: impl IntoIterator<Item = (ProjectId, RouteTarget)>) -> Routes {
        let by_id: BTreeMap<ProjectId, RouteTarget> = targets.into_iter().collect();
        Routes(by_id.into_iter().collect())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ProjectId, &RouteTarget)> {
        self.0.iter().map(|(id, target)| (id, target))
    }

    /// The route array as sent to Caddy. Caddy hands it back with its object keys sorted and
    /// `<`, `>`, `&` escaped as `\u003c` and so on (Go's encoder); both vanish once parsed, so
    /// a [`Value`] read back from Caddy equals this one exactly when Caddy holds this list.
    pub fn to_json(&self) -> Value {
        Value::Array(
            self.0
                .iter()
                .map(|(id, target)| route_json(id, target))
                .collect(),
        )
    }
}

/// The `@id` of a project's route.
pub fn route_id(id: &ProjectId) -> String {
    format!("launchdb-project-{id}")
}

fn route_json(id: &ProjectId, target: &RouteTarget) -> Value {
    let prefix = format!("/db/{id}");
    let handle = match target {
        RouteTarget::Ready | RouteTarget::ReadyAt { .. } => json!([
            {"handler": "rewrite", "strip_path_prefix": prefix},
            {"handler": "reverse_proxy",
             "upstreams": [{"dial": format!("{}:{POSTGREST_PORT}", target.host(id).unwrap_or_default())}]},
        ]),
        RouteTarget::NotReady { reason } => {
            let body = json!({"error": "not_ready", "message": reason}).to_string();
            json!([{
                "handler": "static_response",
                "status_code": 503,
                "headers": {"Content-Type": ["application/json"], "Retry-After": ["5"]},
                "body": body,
            }])
        }
    };
    json!({
        "@id": route_id(id),
        // With the slash: `proj_a` must not catch `/db/proj_ab/...`.
        "match": [{"path": [prefix.clone(), format!("{prefix}/*")]}],
        "handle": handle,
        "terminal": true,
    })
}

/// An ETag from Caddy, quoted as Caddy sent it: `"<config path> <fnv1a-32 hex>"`. Only an
/// [`CaddyAdmin::current`] answer makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Etag(String);

impl Etag {
    /// Wraps the header or trailer value as received.
    pub fn new(raw: impl Into<String>) -> Etag {
        Etag(raw.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a call to Caddy's admin API did not do what was asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CaddyError {
    /// No answer: connection refused, timeout, name not resolved, connection cut.
    #[error("Caddy's admin API is unreachable: {0}")]
    Unavailable(String),
    /// 412: the slot changed since the ETag was read.
    #[error("Caddy's project routes changed while they were being replaced (412)")]
    Conflict,
    /// Any other answer than the expected one.
    #[error("Caddy's admin API answered {status}: {message}")]
    Rejected { status: u16, message: String },
}

/// The two things the manager asks of Caddy, and nothing more.
pub trait CaddyAdmin: Send + Sync + 'static {
    /// The routes in Caddy's slot now (the subroute's `routes` array), and the ETag guarding
    /// them.
    fn current(&self) -> impl Future<Output = Result<(Value, Etag), CaddyError>> + Send;
    /// Replaces the slot's route list in one PATCH, guarded by `If-Match: etag`.
    fn replace(
        &self,
        routes: &Routes,
        etag: &Etag,
    ) -> impl Future<Output = Result<(), CaddyError>> + Send;
}

/// A validated `PGM_CADDY_ADMIN_URL`: `http://<host>:<port>`, an optional trailing `/`, and
/// nothing else (no TLS, user, password, path, query or fragment).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminUrl {
    host: String,
    port: u16,
}

impl AdminUrl {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for AdminUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}", self.host, self.port)
    }
}

impl fmt::Debug for AdminUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a Caddy admin URL was refused. The message never quotes the value (it could carry a
/// password).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid Caddy admin URL: {0} (expected http://<host>:<port>, e.g. http://caddy:2019)")]
pub struct InvalidAdminUrl(&'static str);

impl FromStr for AdminUrl {
    type Err = InvalidAdminUrl;

    fn from_str(raw: &str) -> Result<AdminUrl, InvalidAdminUrl> {
        let scheme_end = raw
            .find("://")
            .ok_or(InvalidAdminUrl("no http:// scheme"))?;
        if !raw[..scheme_end].eq_ignore_ascii_case("http") {
            return Err(InvalidAdminUrl(
                "only http:// is supported (the admin API is on the internal network)",
            ));
        }
        let rest = &raw[scheme_end + 3..];
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('@') {
            return Err(InvalidAdminUrl("a user or password is not allowed"));
        }
        if authority.contains(['/', '?', '#']) {
            return Err(InvalidAdminUrl("a path, query or fragment is not allowed"));
        }
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or(InvalidAdminUrl("no port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&port| port != 0)
            .ok_or(InvalidAdminUrl("the port is not a number from 1 to 65535"))?;
        let host_ok = match host.strip_prefix('[') {
            Some(v6) => v6
                .strip_suffix(']')
                .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok()),
            None => {
                !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
            }
        };
        if !host_ok {
            return Err(InvalidAdminUrl("the host is not a name or an IP address"));
        }
        Ok(AdminUrl {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: &str) -> ProjectId {
        ProjectId::parse(raw).unwrap()
    }

    #[test]
    fn routes_are_sorted_and_deduplicated() {
        let routes = Routes::new([
            (id("b"), RouteTarget::Ready),
            (id("a"), RouteTarget::NotReady { reason: "x".into() }),
            (id("a"), RouteTarget::Ready),
        ]);
        let ids: Vec<&str> = routes.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(routes.len(), 2);
        assert_eq!(routes.iter().next().unwrap().1, &RouteTarget::Ready);
        assert!(Routes::new([]).is_empty());
        assert_eq!(Routes::new([]).to_json(), json!([]));
    }

    #[test]
    fn route_json_is_the_contract() {
        let routes = Routes::new([
            (id("proj_abc123"), RouteTarget::Ready),
            (
                id("proj_starting"),
                RouteTarget::NotReady {
                    reason: "starting: \"db\" <down> & out\n".into(),
                },
            ),
        ]);
        let expected = json!([
            {
                "@id": "launchdb-project-proj_abc123",
                "match": [{"path": ["/db/proj_abc123", "/db/proj_abc123/*"]}],
                "handle": [
                    {"handler": "rewrite", "strip_path_prefix": "/db/proj_abc123"},
                    {"handler": "reverse_proxy",
                     "upstreams": [{"dial": "postgrest-proj_abc123:3000"}]}
                ],
                "terminal": true
            },
            {
                "@id": "launchdb-project-proj_starting",
                "match": [{"path": ["/db/proj_starting", "/db/proj_starting/*"]}],
                "handle": [{"handler": "static_response", "status_code": 503,
                            "headers": {"Content-Type": ["application/json"],
                                        "Retry-After": ["5"]},
                            "body": "{\"error\":\"not_ready\",\"message\":\"starting: \\\"db\\\" <down> & out\\n\"}"}],
                "terminal": true
            }
        ]);
        assert_eq!(routes.to_json(), expected);
        // The body is JSON whose message is the reason, whatever it holds.
        let body = expected[1]["handle"][0]["body"].as_str().unwrap();
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["message"], "starting: \"db\" <down> & out\n");
    }

    /// What Caddy 2.6.2 answered to `GET /id/launchdb-projects` after a PATCH of the list
    /// above (keys sorted, `<>&` escaped Go's way): equal once parsed.
    #[test]
    fn caddys_normalised_answer_compares_equal() {
        let routes = Routes::new([(
            id("proj_starting"),
            RouteTarget::NotReady {
                reason: "a <b> & é".into(),
            },
        )]);
        let from_caddy = r#"[{"@id":"launchdb-project-proj_starting","handle":[{"body":"{\"error\":\"not_ready\",\"message\":\"a \u003cb\u003e \u0026 é\"}","handler":"static_response","headers":{"Content-Type":["application/json"],"Retry-After":["5"]},"status_code":503}],"match":[{"path":["/db/proj_starting","/db/proj_starting/*"]}],"terminal":true}]"#;
        let from_caddy: Value = serde_json::from_str(from_caddy).unwrap();
        assert_eq!(routes.to_json(), from_caddy);
    }

    #[test]
    fn admin_urls() {
        let ok = |raw: &str| raw.parse::<AdminUrl>().unwrap().to_string();
        assert_eq!(ok("http://caddy:2019"), "http://caddy:2019");
        assert_eq!(ok("HTTP://Caddy:2019/"), "http://caddy:2019");
        assert_eq!(ok("http://127.0.0.1:2019"), "http://127.0.0.1:2019");
        assert_eq!(ok("http://[::1]:2019"), "http://[::1]:2019");
        assert_eq!(ok("http://launchdb-caddy:1"), "http://launchdb-caddy:1");

        for bad in [
            "caddy:2019",
            "https://caddy:2019",
            "unix:///run/caddy.sock",
            "http://caddy",
            "http://caddy:",
            "http://caddy:0",
            "http://caddy:65536",
            "http://caddy:port",
            "http://:2019",
            "http://user:hunter2@caddy:2019",
            "http://caddy:2019/config",
            "http://caddy:2019?x=1",
            "http://caddy:2019#x",
            "http://ca ddy:2019",
            "http://[::1:2019",
            "http://[nope]:2019",
        ] {
            let error = bad.parse::<AdminUrl>().unwrap_err().to_string();
            assert!(
                error.starts_with("invalid Caddy admin URL: "),
                "{bad}: {error}"
            );
            assert!(!error.contains("hunter2"), "{error}");
        }
    }
}
