//! The controller against the real Docker daemon: desired-state files in, PostgREST
//! containers out, observed the way a user would (docker inspect, HTTP requests with JWTs,
//! the config the containerised PostgREST double parses).

mod support;

use support::*;

/// Dropping `state/<id>.toml` runs `postgrest-<id>` with our labels, its own config dir
/// mounted read-only, reachable from another container on the network; the rendered config is
/// private to PostgREST's UID.
#[test]
fn new_state_file_runs_a_hardened_container() {
    let env = TestEnv::new();
    let manager = Manager::start(&env);
    let (a, b) = (env.project_id(), env.project_id());
    let (secret_a, password_a) = (secret("jwta"), secret("pwa"));
    let (secret_b, password_b) = (secret("jwtb"), secret("pwb"));
    env.write_state(&a, &state_toml(&secret_a, &password_a));
    env.write_state(&b, &state_toml(&secret_b, &password_b));

    let c = env.wait_serving(&a);
    env.wait_serving(&b);
    assert_eq!(c.name, env.container(&a));
    assert_eq!(c.labels["launchdb.managed-by"], "postgrest-manager");
    assert_eq!(c.labels["launchdb.instance"], env.instance);
    assert_eq!(c.labels["launchdb.project-id"], a);
    assert!(!c.labels["launchdb.spec-hash"].is_empty());
    assert_eq!(c.networks, vec![env.network.clone()]);

    // Its own config dir, read-only, and nothing of the other project.
    let own = env.config_dir.join(&a);
    let mount = c
        .mounts
        .iter()
        .find(|m| m.destination == "/etc/postgrest")
        .expect("the config dir is mounted");
    assert_eq!(Path::new(&mount.source), own);
    assert!(!mount.rw, "the config mount must be read-only");
    for m in &c.mounts {
        assert!(
            !m.source.contains(&b) && Path::new(&m.source) != env.config_dir,
            "{a} sees more than its own config: {m:?}"
        );
    }
    let (ok, _, _) = exec(
        &c.name,
        &["cat", &format!("/etc/postgrest/../{b}/postgrest.conf")],
    );
    assert!(!ok);

    // Hardening.
    assert!(c.readonly_rootfs);
    assert_eq!(c.cap_drop, vec!["ALL".to_string()]);
    assert!(c
        .security_opt
        .iter()
        .any(|o| o.starts_with("no-new-privileges")));
    assert!(c.memory > 0 && c.pids_limit > 0);
    assert_eq!(c.restart_policy, "unless-stopped");
    assert!(c.has_healthcheck);

    // Reachable from another container on the network, by name.
    let body = env
        .from_network(&format!("http://{}:3000/", c.name))
        .expect("GET / from the network");
    assert!(body.trim_start().starts_with('{'), "not JSON: {body}");

    // The secrets on disk: dir 0700, file 0600, owned by PostgREST's UID.
    assert_eq!(mode_and_uid(&own), (0o700, 1000));
    assert_eq!(mode_and_uid(&env.config_file(&a)), (0o600, 1000));

    assert_no_secrets(
        &manager.log(),
        &[&secret_a, &password_a, &secret_b, &password_b],
    );
}

use std::path::Path;
