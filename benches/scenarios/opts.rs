//! Command-line options of the bench: which scenarios, how many runs, how big.

use std::path::PathBuf;
use std::time::Duration;

/// The six scenarios of issue 4, in the order a full run executes them, and `scale` (issue
/// 14), which only runs when named: it takes about half an hour and a thousand containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    Cold,
    Bulk,
    Reload,
    Adoption,
    Api,
    Idle,
    Scale,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Cold,
        Scenario::Bulk,
        Scenario::Reload,
        Scenario::Adoption,
        Scenario::Api,
        Scenario::Idle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Cold => "cold",
            Scenario::Bulk => "bulk",
            Scenario::Reload => "reload",
            Scenario::Adoption => "adoption",
            Scenario::Api => "api",
            Scenario::Idle => "idle",
            Scenario::Scale => "scale",
        }
    }

    fn parse(word: &str) -> Option<Scenario> {
        Scenario::ALL
            .into_iter()
            .chain([Scenario::Scale])
            .find(|s| s.name() == word)
    }
}

#[derive(Debug, Clone)]
pub struct Opts {
    /// Selected scenarios, sorted in execution order.
    pub scenarios: Vec<Scenario>,
    /// Runs of the quick scenarios (cold, reload, adoption, API spawn).
    pub runs: usize,
    /// Runs of each bulk method, per size (the last value repeats for further sizes).
    pub bulk_runs: Vec<usize>,
    /// Bulk sizes; the concurrency sweep runs at the first one.
    pub bulk: Vec<usize>,
    /// PGM_CONCURRENCY values swept at the first bulk size.
    pub sweep: Vec<usize>,
    /// Parallelism of the `xargs -P` baseline.
    pub xargs_p: usize,
    /// Running projects behind the reload, adoption, API and idle scenarios.
    pub fleet: usize,
    /// The fleet manager's `PGM_HEALTHCHECK_SECS`; the product default when `None`.
    pub fleet_healthcheck_secs: Option<u64>,
    /// Project files in the idle scenario (the fleet plus disabled ones).
    pub idle_files: usize,
    pub idle: Duration,
    /// The manager's resync period during the idle window (the product default).
    pub idle_resync_secs: u64,
    /// Measure the idle window a second time with `/metrics` on and scraped.
    pub idle_metrics: bool,
    /// GET /internal/postgrest requests per throughput run, and connections.
    pub api_requests: usize,
    pub api_conns: usize,
    /// `scale`: running projects, project files, and its idle window.
    pub scale: usize,
    pub scale_files: usize,
    pub scale_idle: Duration,
    /// `scale`: sizes of the concurrent spawn bursts.
    pub scale_bursts: Vec<usize>,
    /// `scale`: Docker health check interval of every container, the manager's and the
    /// floor's alike (`PGM_HEALTHCHECK_SECS`; 0: none).
    pub scale_healthcheck_secs: u64,
    /// `scale`: the manager's `PGM_CONCURRENCY` (the product default when not given).
    pub scale_concurrency: Option<usize>,
    pub binary: PathBuf,
    pub image: String,
    /// Write the results into this file (BENCHMARKS.md); `--no-write` keeps it untouched.
    pub report: Option<PathBuf>,
    /// The command line, as a user would type it to reproduce the run.
    pub command: String,
}

const USAGE: &str = "\
usage: cargo bench --bench scenarios -- [SCENARIO...] [OPTIONS]

Scenarios (default: all six): cold bulk reload adoption api idle
  and, only when named: scale (issue 14; about 30 minutes, a thousand containers)
Needs target/release/postgrest-manager (cargo build --release), the image
launchdb/postgrest:v1-test (bash postgrest/build-test-image.sh) and the tests'
database: eval \"$(bash tests/db.sh up)\" (exports PGMT_PGBOUNCER; the bench
connects it to its network as `pgbouncer`); bash tests/db.sh down afterwards.

Options:
  --runs N            runs of cold, reload, adoption and API spawn        [5]
  --bulk-runs A,B     runs of each bulk method, per size                 [2,2]
  --bulk A,B          bulk sizes; the concurrency sweep runs at A         [50,200]
  --sweep C1,C2,...   PGM_CONCURRENCY values swept at the first size     [1,2,4,8,16]
  --xargs-p N         parallelism of the xargs -P baseline                [8]
  --fleet N           running projects behind reload/adoption/api/idle    [200]
                      (tests/db.sh's database holds about 120 with --runs 10:
                      PostgreSQL max_connections 300, 1-2 per project, and
                      PgBouncer keeps a removed project's for 600 s)
  --fleet-healthcheck-secs S  the fleet's Docker health check interval
                      (0: none; as at scale)                   [the product's]
  --idle-files N      project files in the idle scenario                  [1000]
  --idle-secs S       idle window                                          [300]
  --idle-resync-secs S  manager resync period while idle                  [30]
  --idle-metrics      idle twice: metrics off, then on and scraped every 15 s
  --api-requests N    GET /internal/postgrest requests per run            [20000]
  --api-conns N       load generator connections                          [8]
  --scale N           scale: running projects (at most 1,000: one bridge
                      holds 1,024 ports, the database and spares included) [1000]
  --scale-files N     scale: project files, the rest disabled            [10000]
  --scale-idle-secs S scale: idle window                                 [120]
  --scale-bursts A,B  scale: concurrent spawns sent at once, per burst   [30,200]
  --scale-healthcheck-secs S  scale: Docker health check interval of every
                      container, manager's and floor's (0: none)          [30]
  --scale-concurrency N  scale: the manager's PGM_CONCURRENCY             [4]
  --binary PATH       manager binary        [target/release/postgrest-manager]
  --image IMAGE       container image       [launchdb/postgrest:v1-test]
  --no-write          do not update BENCHMARKS.md
";

fn list(value: &str, flag: &str) -> Result<Vec<usize>, String> {
    value
        .split(',')
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{flag}: expected positive numbers, got {value:?}"))
        })
        .collect()
}

/// A health check interval: seconds, 0 for none.
fn seconds(value: &str, flag: &str) -> Result<u64, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("{flag}: expected seconds (0: none), got {value:?}"))
}

fn number(value: &str, flag: &str) -> Result<usize, String> {
    list(value, flag).and_then(|v| match v[..] {
        [n] => Ok(n),
        _ => Err(format!("{flag}: expected one number, got {value:?}")),
    })
}

impl Opts {
    /// Runs of each bulk method at the `index`th size.
    pub fn bulk_runs_at(&self, index: usize) -> usize {
        let runs = &self.bulk_runs;
        runs.get(index).or(runs.last()).copied().unwrap_or(1)
    }

    /// Parses the arguments cargo passes after `--` (plus its own `--bench`).
    pub fn parse(args: &[String], repo: &std::path::Path) -> Result<Opts, String> {
        let mut opts = Opts {
            scenarios: Vec::new(),
            runs: 5,
            bulk_runs: vec![2, 2],
            bulk: vec![50, 200],
            sweep: vec![1, 2, 4, 8, 16],
            xargs_p: 8,
            fleet: 200,
            fleet_healthcheck_secs: None,
            idle_files: 1000,
            idle: Duration::from_secs(300),
            idle_resync_secs: 30,
            idle_metrics: false,
            api_requests: 20_000,
            api_conns: 8,
            scale: 1000,
            scale_files: 10_000,
            scale_idle: Duration::from_secs(120),
            scale_bursts: vec![30, 200],
            scale_healthcheck_secs: 30,
            scale_concurrency: None,
            binary: repo.join("target/release/postgrest-manager"),
            image: "launchdb/postgrest:v1-test".into(),
            report: Some(repo.join("BENCHMARKS.md")),
            command: String::new(),
        };
        let mut rest = args.iter().filter(|a| *a != "--bench");
        while let Some(arg) = rest.next() {
            let mut value = |flag: &str| {
                rest.next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
            };
            match arg.as_str() {
                "-h" | "--help" => return Err(USAGE.into()),
                "--no-write" => opts.report = None,
                "--idle-metrics" => opts.idle_metrics = true,
                "--runs" => opts.runs = number(&value(arg)?, arg)?,
                "--bulk-runs" => opts.bulk_runs = list(&value(arg)?, arg)?,
                "--bulk" => opts.bulk = list(&value(arg)?, arg)?,
                "--sweep" => opts.sweep = list(&value(arg)?, arg)?,
                "--xargs-p" => opts.xargs_p = number(&value(arg)?, arg)?,
                "--fleet" => opts.fleet = number(&value(arg)?, arg)?,
                "--fleet-healthcheck-secs" => {
                    opts.fleet_healthcheck_secs = Some(seconds(&value(arg)?, arg)?);
                }
                "--idle-files" => opts.idle_files = number(&value(arg)?, arg)?,
                "--idle-secs" => opts.idle = Duration::from_secs(number(&value(arg)?, arg)? as u64),
                "--idle-resync-secs" => opts.idle_resync_secs = number(&value(arg)?, arg)? as u64,
                "--api-requests" => opts.api_requests = number(&value(arg)?, arg)?,
                "--api-conns" => opts.api_conns = number(&value(arg)?, arg)?,
                "--scale" => opts.scale = number(&value(arg)?, arg)?,
                "--scale-files" => opts.scale_files = number(&value(arg)?, arg)?,
                "--scale-bursts" => opts.scale_bursts = list(&value(arg)?, arg)?,
                "--scale-healthcheck-secs" => {
                    opts.scale_healthcheck_secs = seconds(&value(arg)?, arg)?;
                }
                "--scale-concurrency" => {
                    opts.scale_concurrency = Some(number(&value(arg)?, arg)?);
                }
                "--scale-idle-secs" => {
                    opts.scale_idle = Duration::from_secs(number(&value(arg)?, arg)? as u64);
                }
                "--binary" => opts.binary = PathBuf::from(value(arg)?),
                "--image" => opts.image = value(arg)?,
                word if !word.starts_with('-') => {
                    let scenario = Scenario::parse(word)
                        .ok_or_else(|| format!("unknown scenario {word:?}\n{USAGE}"))?;
                    opts.scenarios.push(scenario);
                }
                other => return Err(format!("unknown option {other:?}\n{USAGE}")),
            }
        }
        let shown: Vec<&str> = args_shown(args);
        opts.command = format!("cargo bench --bench scenarios -- {}", shown.join(" "))
            .trim_end()
            .to_owned();
        if opts.scenarios.is_empty() {
            opts.scenarios = Scenario::ALL.to_vec();
        }
        opts.scenarios.sort();
        opts.scenarios.dedup();
        if opts.idle_files < opts.fleet {
            opts.idle_files = opts.fleet;
        }
        if opts.scale_files < opts.scale {
            opts.scale_files = opts.scale;
        }
        Ok(opts)
    }
}

/// The arguments as given, minus the `--bench` cargo adds.
fn args_shown(args: &[String]) -> Vec<&str> {
    args.iter()
        .map(String::as_str)
        .filter(|a| *a != "--bench")
        .collect()
}
