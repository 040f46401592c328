//! PostgREST's config file syntax (configurator-pg) and the handful of keys the double uses.
//!
//! The parser is deliberately as strict as PostgREST: the manager's renderer is tested against
//! it, so anything real PostgREST would reject (a bad escape, a lone `$`) must fail here too.

use crate::dburi::DbUri;
use std::fmt;

/// A parsed right-hand side. PostgREST also knows lists and nested groups; no key we use needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl Value {
    /// How `$(name)` renders an earlier key inside a string.
    fn interpolated(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => b.to_string(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Str(s) => s.clone().into(),
            Value::Int(i) => (*i).into(),
            Value::Bool(b) => (*b).into(),
        }
    }
}

/// Where and why parsing failed. The message never quotes file content: values are secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ParseError {}

/// Bindings in file order; a key bound twice keeps both, and the last one wins on lookup.
pub type Bindings = Vec<(String, Value)>;

/// Looks a key up the way PostgREST does when a key is repeated: the last binding wins.
pub fn lookup<'a>(bindings: &'a Bindings, key: &str) -> Option<&'a Value> {
    bindings
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// Parses a whole config file. `env` resolves `$(name)` when no earlier key has that name.
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Bindings, ParseError> {
    Parser {
        chars: text.chars().collect(),
        pos: 0,
        line: 1,
        column: 1,
        bindings: Vec::new(),
        env,
    }
    .file()
}

struct Parser<'e> {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    column: usize,
    bindings: Bindings,
    env: &'e dyn Fn(&str) -> Option<String>,
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            line: self.line,
            column: self.column,
            message: message.into(),
        })
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t' | '\r')) {
            self.bump();
        }
    }

    fn skip_comment(&mut self) {
        if self.peek() == Some('#') {
            while !matches!(self.peek(), None | Some('\n')) {
                self.bump();
            }
        }
    }

    fn file(mut self) -> Result<Bindings, ParseError> {
        loop {
            self.skip_blanks();
            self.skip_comment();
            match self.peek() {
                None => return Ok(self.bindings),
                Some('\n') => {
                    self.bump();
                }
                Some(_) => self.binding()?,
            }
        }
    }

    /// `key = value`, then only blanks or a comment up to the end of the line.
    fn binding(&mut self) -> Result<(), ParseError> {
        let key = self.name("a key")?;
        self.skip_blanks();
        if self.peek() != Some('=') {
            return self.error(format!("expected '=' after key `{key}`"));
        }
        self.bump();
        self.skip_blanks();
        let value = self.value()?;
        self.skip_blanks();
        self.skip_comment();
        if !matches!(self.peek(), None | Some('\n')) {
            return self.error("unexpected text after the value (strings need double quotes)");
        }
        self.bindings.push((key, value));
        Ok(())
    }

    fn name(&mut self, what: &str) -> Result<String, ParseError> {
        if !self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
            return self.error(format!("expected {what} (a letter first)"));
        }
        let mut name = String::new();
        while let Some(c) = self.peek().filter(|&c| is_key_char(c)) {
            name.push(c);
            self.bump();
        }
        Ok(name)
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        match self.peek() {
            Some('"') => self.string().map(Value::Str),
            Some(c) if c == '-' || c.is_ascii_digit() => self.integer(),
            Some(c) if c.is_ascii_alphabetic() => {
                let word = self.name("a value")?;
                match word.as_str() {
                    "true" => Ok(Value::Bool(true)),
                    "false" => Ok(Value::Bool(false)),
                    // Not echoing the word: an unquoted secret would land in the log.
                    _ => self.error("expected a value: a \"string\", an integer, true or false"),
                }
            }
            _ => self.error("expected a value: a \"string\", an integer, true or false"),
        }
    }

    fn integer(&mut self) -> Result<Value, ParseError> {
        let mut digits = String::new();
        if self.peek() == Some('-') {
            digits.push('-');
            self.bump();
        }
        while let Some(c) = self.peek().filter(char::is_ascii_digit) {
            digits.push(c);
            self.bump();
        }
        if self.peek().is_some_and(|c| is_key_char(c) || c == '"') {
            return self.error("malformed integer");
        }
        match digits.parse() {
            Ok(i) => Ok(Value::Int(i)),
            Err(_) => self.error("malformed or out-of-range integer"),
        }
    }

    /// A double-quoted string. Raw newlines are allowed inside, as in configurator-pg.
    fn string(&mut self) -> Result<String, ParseError> {
        let (start_line, start_column) = (self.line, self.column);
        self.bump(); // the opening quote
        let mut out = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(ParseError {
                        line: start_line,
                        column: start_column,
                        message: "unterminated string".into(),
                    })
                }
                Some('"') => {
                    self.bump();
                    return Ok(out);
                }
                Some('\\') => out.push(self.escape()?),
                Some('$') => self.dollar(&mut out)?,
                Some(c) => {
                    out.push(c);
                    self.bump();
                }
            }
        }
    }

    fn escape(&mut self) -> Result<char, ParseError> {
        let (line, column) = (self.line, self.column);
        let bad = |message: &str| {
            Err(ParseError {
                line,
                column,
                message: message.into(),
            })
        };
        self.bump(); // the backslash
        match self.bump() {
            Some('"') => Ok('"'),
            Some('\\') => Ok('\\'),
            Some('n') => Ok('\n'),
            Some('t') => Ok('\t'),
            Some('r') => Ok('\r'),
            Some('u') => {
                let unit = self.hex4()?;
                match unit {
                    // A high surrogate must be followed by an escaped low one (JSON style).
                    0xD800..=0xDBFF => {
                        if self.peek() != Some('\\') || self.chars.get(self.pos + 1) != Some(&'u') {
                            return bad("\\u escape: high surrogate without a low surrogate");
                        }
                        self.bump();
                        self.bump();
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return bad("\\u escape: high surrogate without a low surrogate");
                        }
                        let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                        Ok(char::from_u32(code).expect("a surrogate pair is a valid scalar"))
                    }
                    0xDC00..=0xDFFF => bad("\\u escape: lone low surrogate"),
                    _ => Ok(char::from_u32(unit).expect("not a surrogate")),
                }
            }
            _ => bad("invalid escape sequence (allowed: \\\" \\\\ \\n \\t \\r \\uXXXX)"),
        }
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let mut unit = 0;
        for _ in 0..4 {
            match self.peek().and_then(|c| c.to_digit(16)) {
                Some(d) => {
                    unit = unit * 16 + d;
                    self.bump();
                }
                None => return self.error("\\u escape needs exactly four hex digits"),
            }
        }
        Ok(unit)
    }

    /// `$$` is a literal dollar, `$(name)` interpolates; anything else is an error, like PostgREST.
    fn dollar(&mut self, out: &mut String) -> Result<(), ParseError> {
        self.bump();
        match self.peek() {
            Some('$') => {
                self.bump();
                out.push('$');
                Ok(())
            }
            Some('(') => {
                self.bump();
                let name = self.name("a variable name after '$('")?;
                if self.peek() != Some(')') {
                    return self.error("expected ')' to close '$('");
                }
                self.bump();
                let value = lookup(&self.bindings, &name)
                    .map(Value::interpolated)
                    .or_else(|| (self.env)(&name));
                match value {
                    Some(v) => {
                        out.push_str(&v);
                        Ok(())
                    }
                    None => self.error(format!("no such variable `{name}` (neither an earlier key nor an environment variable)")),
                }
            }
            _ => self.error("lone '$' in a string: write '$$' for a literal dollar sign"),
        }
    }
}

/// The keys the double acts on. Everything else in the file is accepted and ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    // Not reloadable: a change needs a new process (PostgREST ignores it on reload).
    pub db_uri: DbUri,
    pub server_port: u16,
    pub server_host: String,
    pub admin_server_port: Option<u16>,
    pub db_pool: i64,
    pub db_pool_acquisition_timeout: i64,
    pub openapi_server_proxy_uri: Option<String>,
    // Reloadable.
    pub db_schemas: String,
    pub db_anon_role: Option<String>,
    pub jwt_secret: Option<String>,
    pub jwt_aud: Option<String>,
    pub max_rows: Option<i64>,
    pub db_prepared_statements: bool,
    /// `db-config`: re-read the config when a connection is (re)established. The double
    /// re-reads the file only; it does not query in-database settings.
    pub db_config: bool,
    /// Parsed for `--dump-config`; the double never LISTENs, it behaves as `false` always.
    pub db_channel_enabled: bool,
}

impl Config {
    /// Builds a config from parsed bindings, applying PostgREST's defaults and checks.
    pub fn from_bindings(b: &Bindings) -> Result<Config, String> {
        let jwt_secret = string(b, "jwt-secret")?;
        // PostgREST v13+ refuses short secrets at start and on reload; counted in characters.
        if let Some(secret) = &jwt_secret {
            let len = secret.chars().count();
            if len < 32 {
                return Err(format!(
                    "jwt-secret must be at least 32 characters long (it has {len})"
                ));
            }
        }
        // The double verifies with the raw string only; silently doing otherwise would lie.
        if boolean(b, "jwt-secret-is-base64")? == Some(true) {
            return Err("jwt-secret-is-base64 = true is not supported by the test double".into());
        }
        let db_uri = string(b, "db-uri")?.unwrap_or_else(|| "postgresql://".into());
        Ok(Config {
            db_uri: DbUri::parse(&db_uri).map_err(|e| format!("db-uri: {e}"))?,
            server_port: port(b, "server-port")?.unwrap_or(3000),
            server_host: string(b, "server-host")?.unwrap_or_else(|| "!4".into()),
            admin_server_port: port(b, "admin-server-port")?,
            db_pool: match integer(b, "db-pool")?.unwrap_or(10) {
                n if n >= 1 => n,
                _ => return Err("db-pool must be at least 1".into()),
            },
            db_pool_acquisition_timeout: integer(b, "db-pool-acquisition-timeout")?
                .unwrap_or(10)
                .max(1),
            openapi_server_proxy_uri: string(b, "openapi-server-proxy-uri")?,
            db_schemas: string(b, "db-schemas")?.unwrap_or_else(|| "public".into()),
            db_anon_role: string(b, "db-anon-role")?,
            jwt_secret,
            jwt_aud: string(b, "jwt-aud")?,
            max_rows: match integer(b, "db-max-rows")? {
                Some(rows) => Some(rows),
                None => integer(b, "max-rows")?,
            },
            db_prepared_statements: boolean(b, "db-prepared-statements")?.unwrap_or(true),
            db_config: boolean(b, "db-config")?.unwrap_or(true),
            db_channel_enabled: boolean(b, "db-channel-enabled")?.unwrap_or(true),
        })
    }

    /// `db-schemas` as a list; the first one is served by default.
    pub fn schemas(&self) -> Vec<String> {
        self.db_schemas
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    /// What a SIGUSR2 reload does: take the reloadable keys from `new`, keep the rest.
    pub fn reloaded(&self, new: Config) -> Config {
        Config {
            db_uri: self.db_uri.clone(),
            server_port: self.server_port,
            server_host: self.server_host.clone(),
            admin_server_port: self.admin_server_port,
            db_pool: self.db_pool,
            db_pool_acquisition_timeout: self.db_pool_acquisition_timeout,
            openapi_server_proxy_uri: self.openapi_server_proxy_uri.clone(),
            ..new
        }
    }
}

/// Reads and checks a config file, as at start-up and on every reload.
pub fn load(path: &str) -> Result<(Config, Bindings), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let bindings = parse(&text, &|name| std::env::var(name).ok()).map_err(|e| e.to_string())?;
    let config = Config::from_bindings(&bindings)?;
    Ok((config, bindings))
}

// Typed accessors. Like PostgREST, a quoted number or boolean is accepted, and "" means unset.

fn string(b: &Bindings, key: &str) -> Result<Option<String>, String> {
    match lookup(b, key) {
        None => Ok(None),
        Some(Value::Str(s)) if s.is_empty() => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{key} must be a string")),
    }
}

fn integer(b: &Bindings, key: &str) -> Result<Option<i64>, String> {
    match lookup(b, key) {
        None => Ok(None),
        Some(Value::Int(i)) => Ok(Some(*i)),
        Some(Value::Str(s)) if s.is_empty() => Ok(None),
        Some(Value::Str(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{key} must be an integer")),
        Some(Value::Bool(_)) => Err(format!("{key} must be an integer")),
    }
}

fn port(b: &Bindings, key: &str) -> Result<Option<u16>, String> {
    match integer(b, key)? {
        None => Ok(None),
        Some(p) => match u16::try_from(p) {
            Ok(p) if p > 0 => Ok(Some(p)),
            _ => Err(format!("{key} must be a port number between 1 and 65535")),
        },
    }
}

fn boolean(b: &Bindings, key: &str) -> Result<Option<bool>, String> {
    match lookup(b, key) {
        None => Ok(None),
        Some(Value::Bool(v)) => Ok(Some(*v)),
        Some(Value::Str(s)) if s.is_empty() => Ok(None),
        Some(Value::Str(s)) => match s.to_ascii_lowercase().as_str() {
            "true" | "on" => Ok(Some(true)),
            "false" | "off" => Ok(Some(false)),
            _ => Err(format!("{key} must be true or false")),
        },
        Some(Value::Int(_)) => Err(format!("{key} must be true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn one(text: &str) -> Value {
        let b = parse(text, &no_env).unwrap();
        assert_eq!(b.len(), 1, "{b:?}");
        b[0].1.clone()
    }

    fn err(text: &str) -> ParseError {
        parse(text, &no_env).unwrap_err()
    }

    fn s(v: &str) -> Value {
        Value::Str(v.into())
    }

    #[test]
    fn keys_values_comments_and_blank_lines() {
        let text = "# header\n\n  db-schemas = \"public, storage\"  # trailing\nserver-port=3000\r\ndb-prepared-statements = false\nmax-rows = -1\n";
        let b = parse(text, &no_env).unwrap();
        assert_eq!(
            b,
            vec![
                ("db-schemas".into(), s("public, storage")),
                ("server-port".into(), Value::Int(3000)),
                ("db-prepared-statements".into(), Value::Bool(false)),
                ("max-rows".into(), Value::Int(-1)),
            ]
        );
    }

    #[test]
    fn a_hash_inside_a_string_is_not_a_comment() {
        assert_eq!(one("k = \"a#b\" # c"), s("a#b"));
    }

    #[test]
    fn every_escape() {
        assert_eq!(
            one(r#"k = "q\" b\\ n\n t\t r\r u\u00e9 \u0041""#),
            s("q\" b\\ n\n t\t r\r u\u{e9} A")
        );
    }

    #[test]
    fn surrogate_pairs_and_non_ascii() {
        assert_eq!(one(r#"k = "\ud83d\ude00""#), s("😀"));
        assert_eq!(one("k = \"héllo wörld 秘密 😀\""), s("héllo wörld 秘密 😀"));
        assert_eq!(err(r#"k = "\ud83d""#).line, 1);
        assert_eq!(err(r#"k = "\ude00""#).line, 1);
    }

    #[test]
    fn an_escaped_newline_keeps_one_logical_line() {
        let b = parse("a = \"x\\ny = 1\"\nb = 2\n", &no_env).unwrap();
        assert_eq!(b[0], ("a".into(), s("x\ny = 1")));
        assert_eq!(b[1], ("b".into(), Value::Int(2)));
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn bad_escapes_are_errors_naming_the_line() {
        for bad in [r"\q", r"\/", r"\u12", r"\uZZZZ", r"\'", r"\$", r"\a"] {
            let e = err(&format!("a = 1\nk = \"x{bad}\"\n"));
            assert_eq!(e.line, 2, "{bad}: {e}");
        }
        assert!(err(r#"k = "\q""#)
            .to_string()
            .starts_with("line 1, column 6:"));
    }

    #[test]
    fn dollars() {
        assert_eq!(one(r#"k = "pa$$word$$""#), s("pa$word$"));
        let e = err("a = 1\n\nk = \"pa$word\"");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("lone '$'"), "{e}");
        assert_eq!(err(r#"k = "x$""#).line, 1);
        assert_eq!(err(r#"k = "$(HOME""#).line, 1);
        assert_eq!(err(r#"k = "$()""#).line, 1);
    }

    #[test]
    fn interpolation_reads_earlier_keys_then_the_environment() {
        let env = |name: &str| (name == "HOME").then(|| "/home/pg".to_string());
        let b = parse(
            "port = 5432\nuser = \"u\"\nk = \"$(user)@$(HOME):$(port)\"\n",
            &env,
        )
        .unwrap();
        assert_eq!(lookup(&b, "k"), Some(&s("u@/home/pg:5432")));
        // The real environment, the way the binary resolves it.
        let b = parse("k = \"$(HOME)\"", &|n| std::env::var(n).ok()).unwrap();
        assert_eq!(lookup(&b, "k"), Some(&s(&std::env::var("HOME").unwrap())));
        let e = parse("k = \"$(NO_SUCH_VAR_FOR_SURE)\"", &env).unwrap_err();
        assert!(e.message.contains("NO_SUCH_VAR_FOR_SURE"), "{e}");
    }

    #[test]
    fn an_interpolated_value_is_not_parsed_again() {
        let env = |_: &str| Some("$(x)\\q$".to_string());
        assert_eq!(parse("k = \"$(V)\"", &env).unwrap()[0].1, s("$(x)\\q$"));
    }

    #[test]
    fn malformed_lines() {
        assert_eq!(err("k = unquoted").line, 1);
        assert_eq!(err("a = 1\nk = 'single'").line, 2);
        assert_eq!(err("k \"v\"").line, 1);
        assert_eq!(err("k = \"v\" extra").line, 1);
        assert_eq!(err("k = 12abc").line, 1);
        assert_eq!(err("= 1").line, 1);
        assert_eq!(err("a = 1\nb = 2\nk = \"open\n\n").line, 3);
        assert!(!err("k = s3cr3t-value").to_string().contains("s3cr3t"));
        // configurator-pg lists and groups: no PostgREST key needs them, so the double refuses them.
        assert_eq!(err("k = [\"a\"]").line, 1);
    }

    #[test]
    fn the_last_binding_wins() {
        let b = parse("k = 1\nk = 2", &no_env).unwrap();
        assert_eq!(lookup(&b, "k"), Some(&Value::Int(2)));
    }

    fn config(text: &str) -> Result<Config, String> {
        Config::from_bindings(&parse(text, &no_env).unwrap())
    }

    const SECRET: &str = "jwt-secret = \"0123456789abcdef0123456789abcdef\"\n";

    #[test]
    fn defaults_and_typed_keys() {
        let c = config(SECRET).unwrap();
        assert_eq!(c.server_port, 3000);
        assert_eq!(c.server_host, "!4");
        assert_eq!(c.admin_server_port, None);
        assert_eq!(c.db_pool, 10);
        assert_eq!(c.db_schemas, "public");
        assert!(c.db_prepared_statements);
        let c = config(&format!(
            "{SECRET}server-port = \"3333\"\nadmin-server-port = 3001\ndb-anon-role = \"\"\nmax-rows = 1000\ndb-prepared-statements = \"false\"\nunknown-key = \"ignored\""
        ))
        .unwrap();
        assert_eq!(c.server_port, 3333);
        assert_eq!(c.admin_server_port, Some(3001));
        assert_eq!(c.db_anon_role, None);
        assert_eq!(c.max_rows, Some(1000));
        assert!(!c.db_prepared_statements);
    }

    #[test]
    fn config_errors() {
        assert!(config("jwt-secret = \"too short\"")
            .unwrap_err()
            .contains("32"));
        assert!(config("server-port = 70000").is_err());
        assert!(config("server-port = true").is_err());
        assert!(config("db-schemas = 3").is_err());
        assert!(config("db-uri = \"mysql://x\"").is_err());
        assert!(config("jwt-secret-is-base64 = true").is_err());
        // 32 characters, fewer bytes would not do; more bytes than characters is fine.
        assert!(config(&format!("jwt-secret = \"{}\"", "é".repeat(32))).is_ok());
    }

    #[test]
    fn a_reload_keeps_the_non_reloadable_keys() {
        let old = config(&format!("{SECRET}server-port = 3000\ndb-pool = 5")).unwrap();
        let new = config(
            "jwt-secret = \"ffffffffffffffffffffffffffffffff\"\nserver-port = 4000\ndb-pool = 7\njwt-aud = \"a\"",
        )
        .unwrap();
        let merged = old.reloaded(new);
        assert_eq!(merged.server_port, 3000);
        assert_eq!(merged.db_pool, 5);
        assert_eq!(merged.jwt_aud.as_deref(), Some("a"));
        assert_eq!(
            merged.jwt_secret.as_deref(),
            Some("ffffffffffffffffffffffffffffffff")
        );
    }
}
