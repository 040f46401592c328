//! Rendering round trip against the PostgREST double in the test image: a few hundred
//! generated secrets and audiences full of config-file and URI syntax go through the state
//! file (TOML), the renderer and the double's config parser, and come back unchanged.
//!
//! One container parses every rendered file, so this covers far more values than the
//! end-to-end test in `controller.rs`, in a couple of seconds.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use postgrest_manager::render::{render, Template};
use postgrest_manager::settings::DEFAULT_CONFIG_UID;
use postgrest_manager::spec::{ProjectId, Secret, Spec, SpecFile};
use support::*;

/// Characters that mean something to TOML, PostgREST's config syntax, URIs or shells.
const NASTY: &[&str] = &[
    "\"", "\\", "$", "$(", "$(HOME)", "$$", "${HOME}", ")", "(", "\n", "\r", "\t", "\u{0}",
    "\u{1b}", "\u{7f}", "\u{2028}", "@", ":", "/", "?", "#", "%", "%25", "%2", "=", " ", "'", "`",
    "&", "+", "[", "]", "\\u0041", "\\n", "é", "€", "😀", "ünï", "\u{feff}", "a", "Z", "0", "-",
    "_", ".", "~",
];

/// A small deterministic generator (xorshift64*), so a failure is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn nasty(&mut self, min_chars: usize) -> String {
        let mut s = String::new();
        while s.chars().count() < min_chars || self.next() & 3 != 0 {
            s.push_str(NASTY[(self.next() % NASTY.len() as u64) as usize]);
        }
        s
    }
}

struct Case {
    id: String,
    jwt_secret: String,
    password: String,
    jwt_aud: String,
}

#[test]
fn generated_secrets_survive_toml_rendering_and_postgrest_parsing() {
    let env = TestEnv::new();
    let template = Template {
        image: image(),
        network: env.network.clone(),
        ..Template::for_tests(&env.instance, env.config_dir.clone(), DEFAULT_CONFIG_UID)
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut cases = vec![Case {
        id: "fixed".into(),
        jwt_secret: "\"\\$$(HOME)\n@:/?#% é€😀 plus padding to 32+".into(),
        password: "\"\\$$(HOME)\n@:/?#% é€😀".into(),
        jwt_aud: "authenticated".into(),
    }];
    for n in 0..300 {
        cases.push(Case {
            id: format!("case{n}"),
            // A leading `@` (a file path to PostgREST) or JSON (a JWK) is refused by
            // validation; a plain first character keeps every other hostile one in play.
            jwt_secret: format!("s{}", rng.nasty(32)),
            // libpq cannot carry a NUL in a connection string: validation refuses it (below).
            password: rng.nasty(1).replace('\u{0}', ""),
            // With a ':' an audience must be a URI to PostgREST: a scheme, then no spaces.
            jwt_aud: format!(
                "urn:{}",
                rng.nasty(1)
                    .chars()
                    .filter(|c| !c.is_control() && !c.is_whitespace())
                    .collect::<String>()
            ),
        });
    }
    cases.retain(|c| !c.jwt_aud.is_empty() && !c.password.is_empty());

    // A password with a NUL never gets as far as a config file.
    let with_nul = SpecFile::new(
        Secret::new("a-jwt-secret-of-at-least-32-characters".to_owned()),
        Secret::new("pass\u{0}word".to_owned()),
    );
    let refused = Spec::from_file(ProjectId::parse("nul").unwrap(), with_nul)
        .expect_err("a password with a NUL is refused");
    assert!(format!("{refused}").contains("NUL"), "{refused}");

    for case in &cases {
        let mut file = SpecFile::new(
            Secret::new(case.jwt_secret.clone()),
            Secret::new(case.password.clone()),
        );
        file.jwt_aud = Some(case.jwt_aud.clone());
        // Through the state file's TOML first, as the CLI and API write it.
        let file = SpecFile::parse(&file.to_toml()).expect("the TOML round trip parses");
        assert_eq!(file.jwt_secret.expose(), case.jwt_secret);
        assert_eq!(file.authenticator_password.expose(), case.password);
        let id = ProjectId::parse(&case.id).unwrap();
        let spec = Spec::from_file(id, file).expect("a valid spec");
        let rendered = render(&spec, &template);
        let dir = env.config_dir.join(&case.id);
        fs::create_dir_all(&dir).unwrap();
        // Readable by the container's user; these are throwaway values.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let path: PathBuf = dir.join("postgrest.conf");
        fs::write(&path, &rendered.config.text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    }

    // One container dumps every file, each preceded by a marker line with its project id.
    let mount = format!("{}:/cfg:ro", env.config_dir.display());
    let script = "for d in /cfg/*; do echo \"@@@ ${d#/cfg/}\"; \
                  postgrest --dump-config \"$d/postgrest.conf\" 2>&1 || echo '@@@ FAILED'; done";
    let helper = env.helper_name();
    let image = image();
    let out = docker_ok(&[
        "run",
        "--rm",
        "--name",
        &helper,
        "--label",
        &format!("launchdb.instance={}", env.instance),
        "-v",
        &mount,
        &image,
        "sh",
        "-c",
        script,
    ]);
    let mut dumps = std::collections::BTreeMap::new();
    for chunk in out.split("@@@ ").skip(1) {
        let (id, body) = chunk.split_once('\n').unwrap_or((chunk, ""));
        assert!(
            !body.contains("@@@ FAILED") && !body.ends_with("FAILED\n"),
            "the double cannot parse {id}'s config: {body}"
        );
        let json: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{id}: not JSON ({e}): {body}"));
        dumps.insert(id.trim().to_owned(), json);
    }
    assert_eq!(dumps.len(), cases.len());

    for case in &cases {
        let dump = &dumps[&case.id];
        let show = |s: &str| format!("{s:?}");
        assert_eq!(
            dump["config"]["jwt-secret"],
            case.jwt_secret,
            "{}: jwt-secret {}",
            case.id,
            show(&case.jwt_secret)
        );
        assert_eq!(
            dump["config"]["jwt-aud"],
            case.jwt_aud,
            "{}: jwt-aud {}",
            case.id,
            show(&case.jwt_aud)
        );
        assert_eq!(
            dump["db_uri"]["password"],
            case.password,
            "{}: password {}",
            case.id,
            show(&case.password)
        );
        assert_eq!(dump["db_uri"]["user"], format!("{}_authenticator", case.id));
        assert_eq!(dump["db_uri"]["host"], "pgbouncer");
        assert_eq!(dump["db_uri"]["port"], 6432);
        assert_eq!(dump["db_uri"]["dbname"], case.id.as_str());
        // No value smuggled in a key of its own.
        let keys: Vec<&str> = dump["config"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "admin-server-port",
                "db-anon-role",
                "db-channel-enabled",
                "db-pool",
                "db-prepared-statements",
                "db-schemas",
                "db-uri",
                "jwt-aud",
                "jwt-secret",
                "max-rows",
                "server-port",
            ],
            "{}",
            case.id
        );
    }
}
