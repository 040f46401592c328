//! `db-uri` as libpq reads a `postgres://` URI: the parts the manager renders, percent-decoded.
//!
//! The double connects with it (see `pg.rs`); `--dump-config` prints it so tests can check that a
//! password full of `@:/?#%$` survives the renderer's encoding. Like libpq, a `%00` is refused
//! anywhere: a C string cannot carry a NUL byte.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DbUri {
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub dbname: Option<String>,
}

impl fmt::Display for DbUri {
    /// For logs: everything but the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_default = |v: &Option<String>| v.clone().unwrap_or_default();
        write!(
            f,
            "postgresql://{}{}@{}:{}/{}",
            or_default(&self.user),
            if self.password.is_some() { ":***" } else { "" },
            or_default(&self.host),
            self.port.map(|p| p.to_string()).unwrap_or_default(),
            or_default(&self.dbname),
        )
    }
}

impl DbUri {
    /// Parses `postgres[ql]://[user[:password]@][host][:port][/dbname][?params]`.
    /// Errors never quote the URI: it holds the password.
    pub fn parse(uri: &str) -> Result<DbUri, String> {
        let rest = uri
            .strip_prefix("postgresql://")
            .or_else(|| uri.strip_prefix("postgres://"))
            .ok_or("must start with postgres:// or postgresql://")?;
        // The authority ends at the first '/', '?' or '#': that is why the userinfo must encode them.
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((u, p)) => (decode(u, "user")?, decode(p, "password")?),
                None => (decode(info, "user")?, None),
            },
        };
        let (host, port) = split_host_port(hostport)?;
        let dbname = match path.strip_prefix('/') {
            Some(p) => decode(p.split(['?', '#']).next().unwrap_or(""), "dbname")?,
            None => None,
        };
        Ok(DbUri {
            user,
            password,
            host: decode(host, "host")?,
            port,
            dbname,
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "user": self.user,
            "password": self.password,
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
        })
    }
}

fn split_host_port(hostport: &str) -> Result<(&str, Option<u16>), String> {
    // An IPv6 literal is bracketed: its colons are not the port separator.
    let colon = if hostport.starts_with('[') {
        let close = hostport.find(']').ok_or("unterminated [ in host")?;
        match &hostport[close + 1..] {
            "" => None,
            r if r.starts_with(':') => Some(close + 1),
            _ => return Err("unexpected text after ] in host".into()),
        }
    } else {
        hostport.rfind(':')
    };
    match colon {
        None => Ok((hostport, None)),
        Some(i) if hostport[i + 1..].is_empty() => Ok((&hostport[..i], None)),
        Some(i) => match hostport[i + 1..].parse::<u16>() {
            Ok(port) if port > 0 => Ok((&hostport[..i], Some(port))),
            _ => Err("invalid port".into()),
        },
    }
}

/// Percent-decodes one component; empty means absent. Bad `%` sequences and non-UTF-8 are errors.
fn decode(raw: &str, what: &str) -> Result<Option<String>, String> {
    if raw.is_empty() {
        return Ok(None);
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| format!("invalid percent-encoding in the {what}"))?;
            let byte = u8::from_str_radix(hex, 16).expect("two hex digits");
            // libpq: "forbidden value %00 in percent-encoded value". Real PostgREST hands the
            // URI to libpq on every connection attempt and so retries it forever; the double
            // refuses it up front (config error: exit 1 at start, "Failed reloading" later).
            if byte == 0 {
                return Err(format!(
                    "forbidden value %00 in the percent-encoded {what} (libpq cannot carry a NUL byte)"
                ));
            }
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map(Some)
        .map_err(|_| format!("the {what} is not UTF-8 once percent-decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(s: &str) -> Option<String> {
        Some(s.into())
    }

    #[test]
    fn full_uri() {
        let u = DbUri::parse("postgres://app_authenticator:pw@pgbouncer:6432/app?sslmode=disable")
            .unwrap();
        assert_eq!(
            u,
            DbUri {
                user: some("app_authenticator"),
                password: some("pw"),
                host: some("pgbouncer"),
                port: Some(6432),
                dbname: some("app"),
            }
        );
        assert_eq!(
            u.to_string(),
            "postgresql://app_authenticator:***@pgbouncer:6432/app"
        );
    }

    #[test]
    fn a_password_with_every_awkward_character() {
        // @ : / ? # % $ " \ space and a non-ASCII letter, percent-encoded as the renderer must.
        let uri = "postgresql://u%40x:p%40%3A%2F%3F%23%25%24%22%5C%20%C3%A9@db:5432/d%2Fb";
        let u = DbUri::parse(uri).unwrap();
        assert_eq!(u.user, some("u@x"));
        assert_eq!(u.password, some("p@:/?#%$\"\\ é"));
        assert_eq!(u.host, some("db"));
        assert_eq!(u.port, Some(5432));
        assert_eq!(u.dbname, some("d/b"));
    }

    #[test]
    fn optional_parts() {
        assert_eq!(DbUri::parse("postgresql://").unwrap(), DbUri::default());
        let u = DbUri::parse("postgres://h/db").unwrap();
        assert_eq!(
            (u.user, u.host, u.port, u.dbname),
            (None, some("h"), None, some("db"))
        );
        let u = DbUri::parse("postgres://only@[::1]:5433").unwrap();
        assert_eq!(
            (u.user, u.password, u.host, u.port),
            (some("only"), None, some("[::1]"), Some(5433))
        );
        let u = DbUri::parse("postgres://u:@h").unwrap();
        assert_eq!(u.password, None);
    }

    #[test]
    fn a_nul_byte_is_refused_anywhere_as_libpq_does() {
        for (uri, what) in [
            ("postgres://u:s3cr3t%00xyz@h/d", "password"),
            ("postgres://u%00:pw@h/d", "user"),
            ("postgres://u:pw@h%00/d", "host"),
            ("postgres://u:pw@h/d%00b", "dbname"),
            ("postgres://u:%00@h/d", "password"),
        ] {
            let e = DbUri::parse(uri).unwrap_err();
            assert!(e.contains("%00") && e.contains(what), "{uri}: {e}");
            assert!(!e.contains("s3cr3t"), "{uri}: {e}");
        }
        // %01 and the encoded percent sign itself stay allowed.
        assert_eq!(
            DbUri::parse("postgres://u:a%01%2500@h/d").unwrap().password,
            some("a\u{1}%00")
        );
    }

    #[test]
    fn errors_never_quote_the_uri() {
        for bad in [
            "mysql://u:secretpw@h/d",
            "postgres://u:secretpw%@h/d",
            "postgres://u:secretpw%4@h/d",
            "postgres://u:secretpw%zz@h/d",
            "postgres://u:secretpw%ff@h/d",
            "postgres://u:secretpw@h:port/d",
            "postgres://u:secretpw@h:99999/d",
        ] {
            let e = DbUri::parse(bad).unwrap_err();
            assert!(!e.contains("secretpw"), "{bad}: {e}");
        }
    }
}
