//! `cargo bench --bench scenarios`: how fast and how light the manager is, side by side with
//! what users would do instead (issue 4), on the real Docker daemon.
//!
//! Needs `target/release/postgrest-manager` (`cargo build --release`), the test image
//! (`bash postgrest/build-test-image.sh`) and the tests' database (`eval "$(bash tests/db.sh
//! up)"`, which exports `PGMT_PGBOUNCER`): PostgREST serves only once logged in. Builds and
//! starts none of them. Everything it creates carries its
//! own names (`pgm-bench-<pid>`: network, directory, instance labels) and is removed at the end,
//! also on panic and on Ctrl-C. Scenarios are chosen by name, sizes by options (`--help`);
//! each one's results replace its block in BENCHMARKS.md.
//!
//! Scenarios: 1 `cold` one project, 2 `bulk` 50 and 200 projects, 3 `reload`, 4 `adoption`,
//! 5 `idle` (run last), 6 `api`; and, only when named, `scale` (issue 14: a thousand running
//! projects and ten thousand files). Every comparison runs its baseline in the same run,
//! interleaved run by run, so a ratio holds on a noisy machine.
//!
//! The modules live in benches/scenarios/ (a crate root resolves `mod` next to itself, hence
//! the `#[path]`s; cargo would take files directly in benches/ for benches of their own).

#[path = "scenarios/baseline.rs"]
mod baseline;
#[path = "scenarios/bulk.rs"]
mod bulk;
#[path = "scenarios/cold.rs"]
mod cold;
#[path = "scenarios/env.rs"]
mod env;
#[path = "scenarios/fleet.rs"]
mod fleet;
#[path = "scenarios/http.rs"]
mod http;
/// How to start the manager, shared with the integration tests' harness.
#[path = "../tests/support/launch.rs"]
mod launch;
#[path = "scenarios/live.rs"]
mod live;
#[path = "scenarios/manager.rs"]
mod manager;
#[path = "scenarios/opts.rs"]
mod opts;
#[path = "scenarios/proxy.rs"]
mod proxy;
#[path = "scenarios/report.rs"]
mod report;
#[path = "scenarios/scale.rs"]
mod scale;
#[path = "scenarios/stats.rs"]
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;

use env::{Bench, CleanupOnDrop};
use opts::{Opts, Scenario};

/// What the scenarios share: the environment, the options, and what earlier ones learned.
pub struct Ctx {
    pub bench: Bench,
    pub opts: Opts,
    pub machine: String,
    /// The fastest PGM_CONCURRENCY found by the bulk sweep, when it ran.
    pub best_concurrency: Option<usize>,
    /// 200 running projects under one manager, for reload, adoption, API and idle.
    pub fleet: Option<fleet::Fleet>,
}

impl Ctx {
    /// The header of every generated block: when, where, how to reproduce.
    pub fn provenance(&self) -> String {
        format!(
            "Measured {}.\nCommand: `{}`\n",
            self.machine, self.opts.command
        )
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets` runs harness-less benches too; only `cargo bench` passes --bench.
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("scenarios: a benchmark; run it with `cargo bench --bench scenarios`");
        return ExitCode::SUCCESS;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let opts = match Opts::parse(&args, &repo) {
        Ok(opts) => opts,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let bench = Bench::new(&opts.image, &opts.binary);
    let guard = CleanupOnDrop(bench.cleanup.clone());
    let cleanup = bench.cleanup.clone();
    let code = runtime.block_on(async move {
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            cleanup.run();
            std::process::exit(130);
        });
        run(bench, opts).await
    });
    drop(runtime);
    drop(guard);
    code
}

async fn run(mut bench: Bench, opts: Opts) -> ExitCode {
    if let Err(message) = bench.prepare().await {
        eprintln!("bench: {message}");
        return ExitCode::FAILURE;
    }
    let mut ctx = Ctx {
        bench,
        machine: report::machine(),
        opts,
        best_concurrency: None,
        fleet: None,
    };
    eprintln!("bench: {}", ctx.machine);
    let mut failed = false;
    for scenario in ctx.opts.scenarios.clone() {
        eprintln!("bench: == {}", scenario.name());
        let started = std::time::Instant::now();
        let result = match scenario {
            Scenario::Cold => cold::run(&mut ctx).await,
            Scenario::Bulk => bulk::run(&mut ctx).await,
            Scenario::Reload => fleet::reload(&mut ctx).await,
            Scenario::Adoption => fleet::adoption(&mut ctx).await,
            Scenario::Api => fleet::api(&mut ctx).await,
            Scenario::Idle => fleet::idle(&mut ctx).await,
            Scenario::Scale => scale::run(&mut ctx).await,
        };
        eprintln!(
            "bench: {} took {:.0} s",
            scenario.name(),
            started.elapsed().as_secs_f64()
        );
        let (title, body) = match result {
            Ok(done) => done,
            Err(message) => {
                eprintln!("bench: {} failed: {message}", scenario.name());
                failed = true;
                continue;
            }
        };
        println!("\n## {title}\n\n{body}");
        if let Some(path) = &ctx.opts.report {
            if let Err(e) = report::update(path, scenario, &title, &body) {
                eprintln!("bench: cannot update {}: {e}", path.display());
                failed = true;
            }
        }
    }
    if let Some(fleet) = ctx.fleet.take() {
        fleet.down(&ctx.bench).await;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
