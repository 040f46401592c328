//! Scenario 2: bulk, cold. N state files written at once -> all N answering; against the
//! seed's way (a `docker run -d` + wait-until-ready script per project, in sequence), the same
//! under `xargs -P`, and `docker-compose up -d` of a generated compose file. At the first size
//! PGM_CONCURRENCY is swept to find the fastest setting.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::baseline;
use crate::env::{command_output, Bench, Who};
use crate::live::LiveWatch;
use crate::manager::{secret, state_text, Manager, ManagerConfig, FIRST_RECONCILE};
use crate::stats::{num, thousands, Summary};
use crate::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Method {
    Manager(usize),
    Sequential,
    Xargs(usize),
    Compose,
}

impl Method {
    fn label(self) -> String {
        match self {
            Method::Manager(c) => format!("manager, PGM_CONCURRENCY={c}"),
            Method::Sequential => "seed script, sequential (`xargs -P 1`)".into(),
            Method::Xargs(p) => format!("seed script, `xargs -P {p}`"),
            Method::Compose => "`docker-compose up -d` (COMPOSE_PARALLEL_LIMIT 2n+8)".into(),
        }
    }

    fn code(self) -> String {
        match self {
            Method::Manager(c) => format!("m{c}"),
            Method::Sequential => "s".into(),
            Method::Xargs(p) => format!("x{p}"),
            Method::Compose => "d".into(),
        }
    }
}

fn timeout(n: usize) -> Duration {
    Duration::from_secs(120 + 3 * n as u64)
}

pub async fn run(ctx: &mut Ctx) -> Result<(String, String), String> {
    let compose = command_output("docker-compose", &["version", "--short"]) != "?";
    let mut rows = String::new();
    let mut notes = String::new();
    for (index, &n) in ctx.opts.bulk.clone().iter().enumerate() {
        let concurrencies: Vec<usize> = if index == 0 {
            ctx.opts.sweep.clone()
        } else {
            let mut c = vec![4];
            c.extend(ctx.best_concurrency);
            c.sort();
            c.dedup();
            c
        };
        let mut methods: Vec<Method> = concurrencies.iter().map(|&c| Method::Manager(c)).collect();
        methods.extend([Method::Sequential, Method::Xargs(ctx.opts.xargs_p)]);
        if compose {
            methods.push(Method::Compose);
        }
        let mut samples: BTreeMap<Method, Vec<f64>> = BTreeMap::new();
        // A method that fails a run is reported, not fatal: the others' numbers still count.
        let mut failures: BTreeMap<Method, Vec<String>> = BTreeMap::new();
        for run in 0..ctx.opts.bulk_runs_at(index) {
            let mut order = methods.clone();
            order.rotate_left(run % methods.len());
            for method in order {
                match once(&ctx.bench, method, n, run).await {
                    Ok(seconds) => {
                        eprintln!(
                            "bench: bulk {n} run {run} {}: {seconds:.1} s",
                            method.label()
                        );
                        samples.entry(method).or_default().push(seconds);
                    }
                    Err(message) => {
                        eprintln!(
                            "bench: bulk {n} run {run} {} failed: {message}",
                            method.label()
                        );
                        failures.entry(method).or_default().push(message);
                    }
                }
            }
        }
        for (method, messages) in &failures {
            notes.push_str(&format!(
                "- {n} projects, {}: **{} of {} runs failed**: {}\n",
                method.label(),
                messages.len(),
                ctx.opts.bulk_runs_at(index),
                messages.join("; ")
            ));
        }
        let summaries: BTreeMap<Method, Summary> = samples
            .iter()
            .map(|(m, s)| (*m, Summary::of(s).expect("runs > 0")))
            .collect();
        let (best_c, best_summary) = summaries
            .iter()
            .filter_map(|(m, s)| match m {
                Method::Manager(c) => Some((*c, *s)),
                _ => None,
            })
            .min_by(|a, b| a.1.median.total_cmp(&b.1.median))
            .expect("a manager method");
        if index == 0 {
            ctx.best_concurrency = Some(best_c);
        }
        let default = summaries.get(&Method::Manager(4)).copied();
        for (method, summary) in &summaries {
            let versus = match method {
                Method::Manager(_) => "—".to_owned(),
                _ => {
                    let speedup = |m: &Summary| summary.median / m.median;
                    match default {
                        Some(d) if best_c != 4 => {
                            format!("×{:.2} (c=4: ×{:.2})", speedup(&best_summary), speedup(&d))
                        }
                        _ => format!("×{:.2}", speedup(&best_summary)),
                    }
                }
            };
            let per = summary.median / n as f64 * 1000.0;
            rows.push_str(&format!(
                "| {n} | {} | {summary} | {} | {versus} |\n",
                method.label(),
                num(per)
            ));
        }
        let slower_than_compose = summaries
            .get(&Method::Compose)
            .is_some_and(|c| best_summary.median > c.median);
        notes.push_str(&format!(
            "- {n} projects: fastest manager setting PGM_CONCURRENCY={best_c} ({} s){}.\n",
            num(best_summary.median),
            if slower_than_compose {
                "; **slower than docker-compose**"
            } else {
                ""
            }
        ));
    }
    let body = format!(
        "{}\n\
         Time from the trigger (all state files renamed into place / script or compose \
         started) until every container serves (answers `GET /ready`: logged in to its \
         database through PgBouncer), observed the same way for every method. Seconds, median \
         (min–max, n runs); methods interleaved run by run, everything removed between runs. \
         The seed script is `docker run -d` then a `/ready` poll every 10 ms (the seed waits on \
         Docker's 30 s healthcheck instead, which is slower). \
         \"Speed-up\" is the baseline's median over the fastest manager setting's.\n\n\
         | projects | method | s to all serving | ms per project | manager speed-up |\n\
         |---|---|---|---|---|\n{rows}\n{notes}",
        ctx.provenance()
    );
    let sizes: Vec<String> = ctx.opts.bulk.iter().map(|&n| thousands(n)).collect();
    let sizes = match sizes.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    };
    Ok((format!("2. Bulk, cold: {sizes} projects"), body))
}

/// One timed run of one method; leaves nothing behind.
async fn once(bench: &Bench, method: Method, n: usize, run: usize) -> Result<f64, String> {
    let projects: Vec<String> = (0..n)
        .map(|i| format!("{}_b{n}{}r{run}_{i:04}", bench.tag, method.code()))
        .collect();
    let wanted: BTreeSet<String> = projects.iter().cloned().collect();
    let result = match method {
        Method::Manager(c) => by_manager(bench, &projects, &wanted, c).await,
        Method::Sequential => by_script(bench, &projects, &wanted, 1).await,
        Method::Xargs(p) => by_script(bench, &projects, &wanted, p).await,
        Method::Compose => by_compose(bench, &projects, &wanted).await,
    };
    let who = match method {
        Method::Manager(_) => Who::Manager,
        Method::Sequential | Method::Xargs(_) => Who::Script,
        Method::Compose => Who::Compose,
    };
    bench.remove_all(who).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    result.map(|d| d.as_secs_f64())
}

async fn by_manager(
    bench: &Bench,
    projects: &[String],
    wanted: &BTreeSet<String>,
    concurrency: usize,
) -> Result<Duration, String> {
    let state = bench.dir("bulk/state");
    let cfg = ManagerConfig {
        state_dir: state.clone(),
        config_dir: bench.dir("bulk/config"),
        concurrency,
        resync_secs: 30,
        docker_host: None,
        api_key: None,
        log_file: bench.root.join("bulk/manager.log"),
        metrics: false,
        env: Vec::new(),
    };
    let mut manager = Manager::start(bench, &cfg).await?;
    manager
        .wait_log(FIRST_RECONCILE, Duration::from_secs(60))
        .await?;
    // Written beforehand as dotfiles (ignored), so "at once" is only N renames.
    for project in projects {
        let text = state_text(project, &secret(project, 1), true);
        std::fs::write(state.join(format!(".{project}.toml.tmp")), text)
            .map_err(|e| e.to_string())?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut watch = LiveWatch::start(bench, Who::Manager);
    let t0 = Instant::now();
    for project in projects {
        std::fs::rename(
            state.join(format!(".{project}.toml.tmp")),
            state.join(format!("{project}.toml")),
        )
        .map_err(|e| e.to_string())?;
    }
    let result = watch.wait_all(wanted, timeout(projects.len())).await;
    manager.retire().await;
    let (last, _) = result?;
    Ok(last - t0)
}

async fn by_script(
    bench: &Bench,
    projects: &[String],
    wanted: &BTreeSet<String>,
    parallel: usize,
) -> Result<Duration, String> {
    let dir = bench.dir("bulk/script");
    let template = baseline::template(bench, Who::Script, &dir);
    let specs: Vec<_> = projects
        .iter()
        .map(|p| baseline::prepare(&template, &dir, p, 1).container)
        .collect();
    let (script, input) = baseline::script_inputs(&dir, &specs);
    let mut watch = LiveWatch::start(bench, Who::Script);
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new("xargs")
        .args(["-P", &parallel.to_string(), "-n", "1", "bash"])
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("script.log")).map_err(|e| e.to_string())?)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("xargs: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(input.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    drop(stdin);
    let result = watch.wait_all(wanted, timeout(projects.len())).await;
    let status = child.wait().await.map_err(|e| e.to_string())?;
    let (last, _) = result?;
    if !status.success() {
        return Err(format!(
            "the seed script failed ({status}); see {}",
            dir.join("script.log").display()
        ));
    }
    Ok(last - t0)
}

async fn by_compose(
    bench: &Bench,
    projects: &[String],
    wanted: &BTreeSet<String>,
) -> Result<Duration, String> {
    let dir = bench.dir("bulk/compose");
    let template = baseline::template(bench, Who::Compose, &dir);
    let specs: Vec<_> = projects
        .iter()
        .map(|p| baseline::prepare(&template, &dir, p, 1).container)
        .collect();
    let file = dir.join("docker-compose.json");
    std::fs::write(&file, baseline::compose_file(&bench.network, &specs))
        .map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.join("compose.log")).map_err(|e| e.to_string())?;
    let mut watch = LiveWatch::start(bench, Who::Compose);
    let t0 = Instant::now();
    // Compose v1 runs each service's create inside a task of the project-wide pool, on the same
    // limit (COMPOSE_PARALLEL_LIMIT, 64 by default): with more services than that, every slot
    // holds a service waiting for a slot, and `up` hangs (docker/compose#5864, #8161; seen
    // here at 200). A limit above twice the number of services avoids it.
    let limit = (2 * projects.len() + 8).to_string();
    let up = tokio::process::Command::new("docker-compose")
        .args(["-p", &bench.tag, "-f"])
        .arg(&file)
        .args(["up", "-d"])
        .env("COMPOSE_PARALLEL_LIMIT", &limit)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(timeout(projects.len()), up)
        .await
        .map_err(|_| {
            format!(
                "docker-compose up did not return within {} s; see {}",
                timeout(projects.len()).as_secs(),
                dir.join("compose.log").display()
            )
        })?
        .map_err(|e| format!("docker-compose: {e}"))?;
    if !status.success() {
        return Err(format!(
            "docker-compose up failed ({status}); see {}",
            dir.join("compose.log").display()
        ));
    }
    let (last, _) = watch.wait_all(wanted, timeout(projects.len())).await?;
    Ok(last - t0)
}
