//! ARCHITECTURE.md's dependency invariants, checked by reading the sources: only the runtime
//! room (`src/runtime.rs`, `src/runtime/`) imports bollard, only `src/metrics/` imports
//! prometheus_client, only `src/watch.rs` imports notify, and the planner (`src/plan.rs`, or
//! `src/plan/` once it is a folder) imports neither, nor tokio, nor any I/O from std
//! (`std::fs`, `std::net`, `std::process`).
//!
//! `src/` is walked recursively, so a file moved into a folder is still checked; comments and
//! string literals are stripped first, so a doc line naming a crate is not an import.
//! No Docker needed.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/`, by its path relative to the crate root (`src/...`), with
/// its code (comments and string literals blanked).
fn sources() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = BTreeMap::new();
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path: PathBuf = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(root).unwrap();
                let text = fs::read_to_string(&path).unwrap();
                files.insert(relative.display().to_string(), code_only(&text));
            }
        }
    }
    assert!(files.len() > 10, "src/ not found: {files:?}");
    files
}

/// The text with `//` and `/* */` comments and string and char literals replaced by spaces
/// (raw strings included), so only code is left to search.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !chars
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1b}') or a lifetime ('a): only the former is skipped.
            let close = if next == Some('\\') {
                (i + 2..chars.len().min(i + 12)).find(|&j| chars[j] == '\'')
            } else {
                (chars.get(i + 2) == Some(&'\'')).then_some(i + 2)
            };
            match close {
                Some(end) => {
                    out.push_str("' '");
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Whether `code` uses the crate or module path `path` (e.g. `bollard`, `std::fs`): as a
/// path (`bollard::`, `std::fs::`, `use std::fs;`), in a `use` group (`use std::{fs, io}`),
/// or as `extern crate`.
fn uses(code: &str, path: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let starts_word = |at: usize| !code[..at].ends_with(ident) && !code[..at].ends_with("::");
    let starts_word_or_root = |at: usize| {
        // `::bollard::x` names the crate too; `foo::bollard` does not.
        let before = &code[..at];
        !before.ends_with(ident)
            && (!before.ends_with("::") || !before[..before.len() - 2].ends_with(ident))
    };
    for (at, _) in code.match_indices(path) {
        let after = &code[at + path.len()..];
        if after.starts_with(ident) || !starts_word_or_root(at) {
            continue;
        }
        let after = after.trim_start();
        if after.starts_with("::") || after.starts_with(';') || after.starts_with(" as ") {
            return true;
        }
        if after.starts_with(',') || after.starts_with('}') {
            // Inside a `use` group: a single-segment path (`bollard`) is a crate anywhere,
            // `std::fs` only as `fs` inside `std::{...}` (handled below).
            if !path.contains("::") && starts_word(at) {
                return true;
            }
        }
    }
    if code.contains(&format!("extern crate {path}")) {
        return true;
    }
    // `use std::{fs, net::TcpStream}`: the last segment inside a group of its parent.
    if let Some((parent, last)) = path.rsplit_once("::") {
        for (at, _) in code.match_indices(&format!("{parent}::{{")) {
            if !starts_word(at) {
                continue;
            }
            let group = &code[at + parent.len() + 3..];
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            let group = &group[..end];
            // Only the group's top level: `std::{io::{self, fs}}` is not `std::fs`.
            let mut depth = 0;
            let mut top = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ if depth == 0 => top.push(c),
                    _ => {}
                }
            }
            let hit = top.split(',').any(|item| {
                let item = item.trim();
                item == last
                    || item.starts_with(&format!("{last}::"))
                    || item.starts_with(&format!("{last} as "))
            });
            if hit {
                return true;
            }
        }
    }
    false
}

fn in_room(file: &str, room: &str) -> bool {
    file == format!("src/{room}.rs") || file.starts_with(&format!("src/{room}/"))
}

/// Files that use `path`, sorted.
fn users(sources: &BTreeMap<String, String>, path: &str) -> Vec<String> {
    sources
        .iter()
        .filter(|(_, code)| uses(code, path))
        .map(|(file, _)| file.clone())
        .collect()
}

#[test]
fn only_the_runtime_imports_bollard() {
    let sources = sources();
    let users = users(&sources, "bollard");
    assert!(
        users.iter().any(|f| f.starts_with("src/runtime/")),
        "no runtime file uses bollard: the check is blind ({users:?})"
    );
    let outside: Vec<&String> = users.iter().filter(|f| !in_room(f, "runtime")).collect();
    assert!(
        outside.is_empty(),
        "bollard is imported outside src/runtime/: {outside:?}"
    );
}

/// The metrics room owns the registry and the exposition format; everyone else counts through
/// its typed methods. It is a leaf: it reads no snapshot, touches no Docker, serves no API.
#[test]
fn only_the_metrics_room_imports_prometheus_client_and_it_imports_no_room_that_acts() {
    let sources = sources();
    let users = users(&sources, "prometheus_client");
    assert!(
        users.iter().any(|f| f.starts_with("src/metrics/")),
        "no metrics file uses prometheus_client: the check is blind ({users:?})"
    );
    let outside: Vec<&String> = users.iter().filter(|f| !in_room(f, "metrics")).collect();
    assert!(
        outside.is_empty(),
        "prometheus_client outside src/metrics/: {outside:?}"
    );
    for (file, code) in &sources {
        if in_room(file, "metrics") {
            for forbidden in [
                "crate::runtime::docker",
                "crate::reconcile",
                "crate::api",
                "crate::settings",
                "crate::cli",
                "bollard",
                "hyper",
            ] {
                assert!(!uses(code, forbidden), "{file} uses {forbidden}");
            }
        }
    }
    // The Docker runtime is metered from outside: it knows nothing of metrics.
    assert!(!uses(&sources["src/runtime/docker.rs"], "crate::metrics"));
}

#[test]
fn only_the_watcher_imports_notify() {
    let sources = sources();
    let users = users(&sources, "notify");
    assert_eq!(users, vec!["src/watch.rs".to_string()]);
}

#[test]
fn hyper_is_used_in_two_places_only() {
    // The Caddy client, and the API's server (which needs hyper's timer and limits).
    let sources = sources();
    for crate_name in ["hyper", "hyper_util"] {
        let users = users(&sources, crate_name);
        assert_eq!(
            users,
            vec![
                "src/api/serve.rs".to_string(),
                "src/caddy/admin.rs".to_string()
            ],
            "{crate_name}"
        );
    }
    assert_eq!(
        users(&sources, "http_body_util"),
        vec!["src/caddy/admin.rs".to_string()]
    );
}

#[test]
fn the_api_never_touches_docker_and_nothing_imports_the_cli() {
    let sources = sources();
    for (file, code) in &sources {
        if in_room(file, "api") {
            for forbidden in [
                "bollard",
                "crate::runtime::docker",
                "crate::settings",
                "crate::cli",
            ] {
                assert!(!uses(code, forbidden), "{file} uses {forbidden}");
            }
        }
        if !in_room(file, "cli") && file != "src/main.rs" {
            assert!(!uses(code, "crate::cli"), "{file} imports the CLI");
        }
    }
}

#[test]
fn the_planner_does_no_io() {
    let sources = sources();
    let planner: Vec<(&String, &String)> = sources
        .iter()
        .filter(|(file, _)| in_room(file, "plan"))
        .collect();
    assert!(!planner.is_empty(), "no src/plan.rs or src/plan/");
    for (file, code) in planner {
        for forbidden in [
            "bollard",
            "notify",
            "tokio",
            "std::fs",
            "std::net",
            "std::process",
        ] {
            assert!(!uses(code, forbidden), "{file} uses {forbidden}");
        }
    }
}

/// The checker itself: it sees imports in every form the sources use or could use, and
/// nothing in comments, strings or longer names.
#[test]
fn the_import_checker_sees_imports_and_only_imports() {
    let seen = |code: &str, path: &str| uses(&code_only(code), path);
    for (code, path) in [
        ("use bollard::Docker;", "bollard"),
        ("use bollard;", "bollard"),
        ("let d = ::bollard::Docker::connect();", "bollard"),
        ("use {bollard, serde};", "bollard"),
        ("extern crate bollard;", "bollard"),
        ("use std::fs;", "std::fs"),
        ("use std::fs::File;", "std::fs"),
        ("let t = std::fs::read(p);", "std::fs"),
        ("use std::{collections::BTreeMap, fs};", "std::fs"),
        ("use std::{net::TcpStream, io};", "std::net"),
        ("use std::{fs as f};", "std::fs"),
        ("async fn f() { tokio::spawn(x); }", "tokio"),
        ("use notify::Watcher;", "notify"),
    ] {
        assert!(seen(code, path), "missed {path} in {code:?}");
    }
    for (code, path) in [
        ("// uses bollard::Docker", "bollard"),
        ("/// see tokio::spawn", "tokio"),
        ("/* std::fs::read */ let x = 1;", "std::fs"),
        (r#"let s = "bollard::Docker";"#, "bollard"),
        (r##"let s = r#"std::fs::read"#;"##, "std::fs"),
        ("use my_bollard::X;", "bollard"),
        ("use crate::runtime::bollard_like;", "bollard"),
        ("fn notify_all() {}", "notify"),
        ("self.notify(x);", "notify"),
        ("use std::io::{self, fs_like};", "std::fs"),
        ("use tokio_util::sync;", "tokio"),
        ("let c = '\"'; let s = \"x\";", "x"),
    ] {
        assert!(!seen(code, path), "false positive {path} in {code:?}");
    }
}

/// The harness reads the manager's log lines as they look in practice.
#[test]
fn the_harness_reads_the_address_and_the_pass_from_log_lines() {
    use support::launch::{finished_pass, listen_addr, strip_ansi};
    let listening = "2026-11-29T07:03:47.119432Z  INFO API listening listen=127.0.0.1:43907";
    assert_eq!(
        listen_addr(listening),
        Some("127.0.0.1:43907".parse().unwrap())
    );
    let pass = "2026-11-29T07:03:47.210721Z DEBUG pass finished pass=12";
    assert_eq!(finished_pass(pass), Some(12));
    assert_eq!(finished_pass(listening), None);
    assert_eq!(listen_addr(pass), None);
    let coloured = "\u{1b}[2m2026\u{1b}[0m \u{1b}[34mDEBUG\u{1b}[0m pass finished \u{1b}[3mpass\u{1b}[0m\u{1b}[2m=\u{1b}[0m7";
    assert_eq!(finished_pass(&strip_ansi(coloured)), Some(7));
}
