//! The include's text, and the loop keeping it (on the fake runtime, with a real file).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::reconcile::{Controller, Handle, LoopConfig};
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{ContainerInfo, Health, Runtime, State};
use crate::spec::{ProjectId, Secret, SpecFile};

const SECRET: &str = "s3cret-s3cret-s3cret-s3cret-0123456789";
const PASSWORD: &str = "pa55word-never-in-the-include";
const WAIT: Duration = Duration::from_secs(10);
const PGBOUNCER: &str = "test-pgbouncer";

fn pid(id: &str) -> ProjectId {
    ProjectId::parse(id).unwrap()
}

fn file() -> SpecFile {
    SpecFile::new(Secret::new(SECRET), Secret::new(PASSWORD))
}

fn spec(id: &str, edit: impl FnOnce(&mut SpecFile)) -> Spec {
    let mut f = file();
    edit(&mut f);
    Spec::from_file(pid(id), f).unwrap()
}

#[test]
fn one_entry_per_database_with_its_pool_and_no_secret() {
    let specs = [
        spec("p_default", |_| {}),
        spec("p_sized", |f| {
            f.db_name = Some("sized_db".into());
            (f.db_pool, f.pool_size, f.reserve_pool) = (Some(12), Some(8), Some(4));
        }),
        // Disabled projects keep their entry: enabling again is instant.
        spec("p_off", |f| f.enabled = Some(false)),
        // Two projects on one database: one entry, the larger pools.
        spec("p_shared_a", |f| {
            f.db_name = Some("shared".into());
            f.pool_size = Some(15);
        }),
        spec("p_shared_b", |f| {
            f.db_name = Some("shared".into());
            f.reserve_pool = Some(3);
        }),
        // The spec takes Unicode letters; the ini could not carry them.
        spec("p_unicode", |f| f.db_name = Some("bäd".into())),
    ];
    let (text, skipped) = render(&specs, "postgres", 5432);
    let entries: Vec<&str> = text.lines().filter(|l| !l.starts_with(';')).collect();
    assert_eq!(
        entries,
        [
            "p_default = host=postgres port=5432 dbname=p_default pool_size=10 reserve_pool=0",
            "p_off = host=postgres port=5432 dbname=p_off pool_size=10 reserve_pool=0",
            "shared = host=postgres port=5432 dbname=shared pool_size=15 reserve_pool=3",
            "sized_db = host=postgres port=5432 dbname=sized_db pool_size=8 reserve_pool=4",
        ]
    );
    assert_eq!(skipped, ["p_unicode"]);
    for secret in [SECRET, PASSWORD, "password=", "user="] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    // Nothing wanted: a file with comments only, so PgBouncer knows no database.
    let (empty, _) = render([], "postgres", 5432);
    assert!(empty.lines().all(|l| l.starts_with(';')), "{empty}");
}

struct Env {
    _tmp: tempfile::TempDir,
    cfg: LoopConfig,
    fake: FakeRuntime,
    include: std::path::PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let include = tmp.path().join("pgbouncer").join("databases.ini");
        std::fs::create_dir(include.parent().unwrap()).unwrap();
        let mut cfg = LoopConfig::for_tests("pools", tmp.path());
        cfg.pgbouncer = Some(PgBouncerConfig {
            include: include.clone(),
            container: PGBOUNCER.into(),
            server_host: "pg".into(),
            server_port: 5433,
        });
        Env {
            _tmp: tmp,
            cfg,
            fake: FakeRuntime::new(),
            include,
        }
    }

    fn add_pgbouncer(&self) {
        self.fake.insert(ContainerInfo {
            id: PGBOUNCER.into(),
            name: PGBOUNCER.into(),
            labels: BTreeMap::new(),
            state: State::Running,
            health: Health::None,
            ip: None,
            exit_code: None,
            tasks: None,
        });
    }

    fn start(&self) -> (Handle, tokio::sync::oneshot::Sender<()>) {
        let (controller, handle) = Controller::new(Arc::new(self.fake.clone()), self.cfg.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(controller.run(async move {
            let _ = stopped.await;
        }));
        (handle, stop)
    }

    fn write(&self, id: &str, edit: impl FnOnce(&mut SpecFile)) {
        let mut f = file();
        edit(&mut f);
        self.cfg.state.write(&pid(id), &f).unwrap();
    }

    fn include(&self) -> String {
        std::fs::read_to_string(&self.include).unwrap_or_default()
    }

    /// SIGHUPs PgBouncer received so far: the fake answers each delivered signal with a line
    /// in the container's log (a failed one, to a missing container, leaves none).
    async fn hups(&self) -> usize {
        match self.fake.logs(PGBOUNCER, 10_000).await {
            Ok(log) => log.lines().count(),
            Err(_) => 0,
        }
    }

    /// Waits (polling, bounded by [`WAIT`]) until the include holds `line` (or, with
    /// `present` false, no longer does) and PgBouncer has had `hups` SIGHUPs.
    async fn wait_include(&self, handle: &Handle, line: &str, present: bool, hups: usize) {
        handle.wake();
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.include().contains(line) != present || self.hups().await != hups {
            assert!(
                tokio::time::Instant::now() < deadline,
                "include {:?}, {} SIGHUPs; wanted {line:?} present={present}, {hups}",
                self.include(),
                self.hups().await
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn passes(handle: &Handle, n: u64) {
    for _ in 0..n {
        let before = handle.snapshot().passes;
        handle.wake();
        handle
            .wait_for(WAIT, |s| s.passes > before)
            .await
            .expect("the loop makes a pass when woken");
    }
}

#[tokio::test]
async fn the_loop_keeps_the_include_and_signals_pgbouncer_only_on_change() {
    let env = Env::new();
    env.add_pgbouncer();
    let (handle, _stop) = env.start();
    // The first pass writes the (empty) file and signals once.
    env.wait_include(&handle, ";", true, 1).await;

    env.write("p1", |_| {});
    let p1 = "p1 = host=pg port=5433 dbname=p1 pool_size=10 reserve_pool=0\n";
    env.wait_include(&handle, p1, true, 2).await;
    // Unchanged desired state (a resync's listing too): no write, no signal.
    passes(&handle, 3).await;
    assert_eq!(env.hups().await, 2);

    let id = pid("p1");
    let container =
        |s: &crate::reconcile::Snapshot| s.projects[&id].container.as_ref().map(|c| c.id.clone());
    let before = handle
        .wait_for(WAIT, |s| s.projects.get(&id).is_some_and(|p| p.converged()))
        .await
        .expect("p1 converges");
    env.write("p1", |f| {
        (f.pool_size, f.reserve_pool) = (Some(20), Some(5));
    });
    let sized = "p1 = host=pg port=5433 dbname=p1 pool_size=20 reserve_pool=5\n";
    env.wait_include(&handle, sized, true, 3).await;
    // The pool is PgBouncer's business: PostgREST's container stays as it was.
    passes(&handle, 2).await;
    let after = handle.snapshot();
    assert!(after.projects[&id].converged());
    assert_eq!(container(&after), container(&before));
    assert!(container(&after).is_some());

    // An invalid file keeps the last good spec, and with it the entry.
    std::fs::write(env.cfg.state.file(&pid("p1")), "pool_size = ").unwrap();
    passes(&handle, 2).await;
    assert!(env.include().contains(sized), "{}", env.include());
    assert_eq!(env.hups().await, 3);

    // A disabled project keeps its entry; removing the file removes it.
    env.write("p1", |f| {
        f.disable();
        (f.pool_size, f.reserve_pool) = (Some(20), Some(5));
    });
    passes(&handle, 2).await;
    assert!(env.include().contains(sized), "{}", env.include());
    env.cfg.state.remove(&pid("p1")).unwrap();
    env.wait_include(&handle, "p1 =", false, 4).await;
    for secret in [SECRET, PASSWORD] {
        assert!(!env.include().contains(secret));
    }
    // No temp file left beside the include.
    let dir = env.include.parent().unwrap();
    let names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["databases.ini"]);
}

#[tokio::test]
async fn a_missing_pgbouncer_is_retried_with_backoff_and_containers_still_converge() {
    let env = Env::new();
    env.write("p1", |_| {});
    let (handle, _stop) = env.start();
    // The file is written, the signal fails (no such container): pending, with backoff.
    let p1 = "p1 = host=pg port=5433 dbname=p1 pool_size=10 reserve_pool=0\n";
    env.wait_include(&handle, p1, true, 0).await;
    let id = pid("p1");
    handle
        .wait_for(WAIT, |s| s.projects.get(&id).is_some_and(|p| p.converged()))
        .await
        .expect("the project converges while PgBouncer is missing");
    // The status says why the pools are not in place (the API shows it on every project:
    // `api::tests::the_pools_state_is_shown_on_projects_with_a_spec`).
    let pending = handle.snapshot().pools.clone();
    let why = pending
        .expect("pools are kept")
        .expect("pending while PgBouncer is missing");
    assert!(why.starts_with(&format!("signalling {PGBOUNCER}")), "{why}");
    // PgBouncer appears: the loop's own retry timer brings the signal, no wake needed.
    env.add_pgbouncer();
    let deadline = tokio::time::Instant::now() + WAIT;
    while env.hups().await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never signalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    passes(&handle, 2).await;
    assert_eq!(env.hups().await, 1, "signalled once, then in sync");
    assert_eq!(handle.snapshot().pools, Some(None), "in place again");
}
