//! Scenario 1: one project, cold. A state file is written -> its container runs and serves
//! (answers `/ready`; `/live` on the way is recorded too); against the Docker floor for the
//! same container: create + start through the API (the manager's own runtime code) and
//! `docker run -d` through the CLI.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use crate::baseline::{self, Floor};
use crate::env::{poll_until, Who};
use crate::live::{median, LiveWatch, Phases};
use crate::manager::{secret, state_text, write_state, Manager, ManagerConfig, FIRST_RECONCILE};
use crate::stats::{num, Summary};
use crate::Ctx;

const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Method {
    Manager,
    Api,
    Cli,
}

pub async fn run(ctx: &mut Ctx) -> Result<(String, String), String> {
    let bench = &ctx.bench;
    let state = bench.dir("cold/state");
    let config = bench.dir("cold/config");
    let floor_dir = bench.dir("cold/floor");
    let cfg = ManagerConfig {
        state_dir: state.clone(),
        config_dir: config,
        concurrency: 4,
        resync_secs: 30,
        docker_host: None,
        api_key: None,
        log_file: bench.root.join("cold/manager.log"),
        metrics: false,
        env: Vec::new(),
    };
    let mut manager = Manager::start(bench, &cfg).await?;
    manager.wait_log(FIRST_RECONCILE, TIMEOUT).await?;
    let mut watches = BTreeMap::from([
        (Method::Manager, LiveWatch::start(bench, Who::Manager)),
        (Method::Api, LiveWatch::start(bench, Who::Floor)),
        (Method::Cli, LiveWatch::start(bench, Who::Cli)),
    ]);
    // Neither the manager nor the floor goes through a proxy here.
    let floor = Floor::new(None).await;
    let api_template = baseline::template(bench, Who::Floor, &floor_dir);
    let cli_template = baseline::template(bench, Who::Cli, &floor_dir);
    let mut samples: BTreeMap<Method, Vec<f64>> = BTreeMap::new();
    let mut samples_live: BTreeMap<Method, Vec<f64>> = BTreeMap::new();
    let mut breakdown: BTreeMap<Method, Vec<Phases>> = BTreeMap::new();

    // Run 0 warms the daemon, the page cache and the manager up; it is not counted.
    for run in 0..=ctx.opts.runs {
        let mut order = [Method::Manager, Method::Api, Method::Cli];
        order.rotate_left(run % 3);
        for method in order {
            let letter = match method {
                Method::Manager => 'm',
                Method::Api => 'a',
                Method::Cli => 'c',
            };
            let project = format!("{}_c{run}{letter}", bench.tag);
            let watch = watches.get_mut(&method).expect("one per method");
            let (t0, wall0, live) = match method {
                Method::Manager => {
                    let text = state_text(&project, &secret(&project, 1), true);
                    let (t0, wall0) = (Instant::now(), SystemTime::now());
                    write_state(&state, &project, &text);
                    let live = watch.wait_one(&project, TIMEOUT).await?;
                    std::fs::remove_file(state.join(format!("{project}.toml")))
                        .map_err(|e| e.to_string())?;
                    let gone = poll_until(TIMEOUT, Duration::from_millis(50), || async {
                        !bench.containers(Who::Manager).await.contains_key(&project)
                    })
                    .await;
                    if !gone {
                        return Err(format!("the manager did not remove {project}"));
                    }
                    (t0, wall0, live)
                }
                Method::Api => {
                    let rendered = baseline::prepare(&api_template, &floor_dir, &project, 1);
                    let (t0, wall0) = (Instant::now(), SystemTime::now());
                    floor.create_start(&rendered.container).await?;
                    let live = watch.wait_one(&project, TIMEOUT).await?;
                    bench.remove_all(Who::Floor).await;
                    (t0, wall0, live)
                }
                Method::Cli => {
                    let rendered = baseline::prepare(&cli_template, &floor_dir, &project, 1);
                    let args = baseline::run_args(&rendered.container);
                    let (t0, wall0) = (Instant::now(), SystemTime::now());
                    let status = tokio::process::Command::new("docker")
                        .args(&args)
                        .stdout(std::process::Stdio::null())
                        .status()
                        .await
                        .map_err(|e| e.to_string())?;
                    if !status.success() {
                        return Err(format!("docker run failed: {status}"));
                    }
                    let live = watch.wait_one(&project, TIMEOUT).await?;
                    bench.remove_all(Who::Cli).await;
                    (t0, wall0, live)
                }
            };
            let ms = (live.at - t0).as_secs_f64() * 1000.0;
            let phases = Phases::of(t0, wall0, &live);
            eprintln!("bench: cold run {run} {method:?}: {ms:.0} ms ({phases:?})");
            if run > 0 {
                samples.entry(method).or_default().push(ms);
                samples_live
                    .entry(method)
                    .or_default()
                    .push(phases.total_live);
                breakdown.entry(method).or_default().push(phases);
            }
            // Let the daemon finish the removal's background work before the next start.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    manager.retire().await;

    let summary = |m: Method| Summary::of(&samples[&m]).expect("runs > 0");
    let (mgr, api, cli) = (
        summary(Method::Manager),
        summary(Method::Api),
        summary(Method::Cli),
    );
    let live = |m: Method| Summary::of(&samples_live[&m]).expect("runs > 0");
    let (mgr_live, api_live, cli_live) =
        (live(Method::Manager), live(Method::Api), live(Method::Cli));
    let vs_floor = |s: &Summary| {
        format!(
            "{:+.0} ms ({:+.1}%, ×{:.2})",
            s.median - api.median,
            (s.median / api.median - 1.0) * 100.0,
            s.median / api.median
        )
    };
    let overhead = mgr.median - api.median;
    let percent = overhead / api.median * 100.0;
    let mut phases = String::new();
    for (method, label) in [
        (Method::Manager, "manager"),
        (Method::Api, "API floor"),
        (Method::Cli, "CLI"),
    ] {
        let p = &breakdown[&method];
        phases.push_str(&format!(
            "| {label} | {} | {} | {} | {} |\n",
            median(p.iter().map(|p| p.to_create)),
            median(p.iter().map(|p| p.to_start)),
            median(p.iter().map(|p| p.to_live)),
            median(p.iter().map(|p| p.to_ready)),
        ));
    }
    let verdict = if percent > 10.0 {
        "**above** the 10% budget"
    } else {
        "within the 10% budget"
    };
    let body = format!(
        "{}\n\
         Time from the trigger (state file renamed into place / API call / CLI started) until \
         the container serves: answers `GET /ready` (PostgREST logged in to its database \
         through PgBouncer and loaded its schema cache), observed the same way for every method \
         (Docker `start` event, inspect, poll `/live` every 5 ms, then `/ready` every 5 ms). \
         The time to `/live` (the process up, before its login) is what earlier runs, without a \
         database, called answering. Milliseconds, median (min–max, n runs), after one warm-up \
         run; methods interleaved run by run.\n\n\
         | method | ms to serving (`/ready`) | vs Docker API floor | ms to `/live` |\n\
         |---|---|---|---|\n\
         | manager (state file written) | {mgr} | {} | {mgr_live} |\n\
         | Docker API create + start (floor) | {api} | — | {api_live} |\n\
         | `docker run -d` (CLI) | {cli} | {} | {cli_live} |\n\n\
         Manager overhead over the floor: **{} ms ({:.1}%, ratio {:.2})**, {verdict}.\n\n\
         Where the time goes (medians, ms; from the Docker `create` and `start` events' \
         timestamps and the bench's probes):\n\n\
         | method | trigger → `create` event | `create` → `start` event | `start` → `/live` | `/live` → `/ready` |\n\
         |---|---|---|---|---|\n{phases}",
        ctx.provenance(),
        vs_floor(&mgr),
        vs_floor(&cli),
        num(overhead),
        percent,
        mgr.median / api.median,
    );
    Ok(("1. One project, cold".into(), body))
}
