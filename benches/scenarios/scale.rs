//! The `scale` scenario (issue 14): a thousand running projects and ten thousand project files
//! under one manager, on the real Docker daemon, each number beside a baseline from the same
//! run. In order (one Linux bridge holds at most 1,024 ports, so the phases never run more
//! than `--scale` containers plus one of each baseline and the database's PgBouncer at once):
//!
//! 1. a fresh manager with 10 projects: `GET /internal/postgrest/<id>` and the list at 10;
//!    then 30 and then 200 concurrent `POST .../spawn`, each 201 minus the moment the bench
//!    saw its own container serve (`/ready`); their files are removed again.
//! 2. bulk, cold: the fastest raw-API floor first (create + start of every container through
//!    the same counting proxy, `--scale` of them, 16 in parallel), removed again; then the
//!    manager with `--scale` files written at once. Clock: until the last one serves, both
//!    observed with the host's neighbour cache entry dropped (one floor container of a
//!    thousand, on an address the bursts had used, went unseen for 1,120 s in one run). The
//!    memory one test-double container costs is read here (`docker stats`, the daemon's RSS,
//!    the shims' PSS).
//! 3. with `--scale` running: the API list and one project's view under load, beside
//!    `/healthz` as a control; one reload (Docker calls, containers touched) against the same
//!    reload by hand on a floor container, alternating; one new project against one floor
//!    container, alternating (both observed with the host's neighbour cache entry dropped:
//!    [`LiveWatch::start_uncached`]); adoption after a restart (time, Docker calls by kind, containers
//!    recreated, restarted or written to); idle with `--scale-files` files (the rest
//!    disabled): CPU, RSS, Docker calls per resync.
//!
//! Everything is removed at the end; on failure, panic or Ctrl-C the bench's cleanup removes
//! the containers by their instance labels (`env.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};

use crate::baseline::{self, Floor};
use crate::env::{command_output, poll_until, Bench, Who};
use crate::fleet::{changed, inventory, warm, written_containers};
use crate::http::{self, Conn};
use crate::live::{self, LiveWatch};
use crate::manager::{
    clock_ticks, cpu_time, secret, state_text, write_state, Manager, ManagerConfig, FIRST_RECONCILE,
};
use crate::proxy::{Calls, Proxy};
use crate::stats::{quantile, thousands, Summary};
use crate::Ctx;

/// The kernel's cap on the ports of one Linux bridge (`BR_MAX_PORTS`).
const BRIDGE_PORTS: usize = 1024;
/// Ports the scenario needs beside the fleet: PgBouncer, one floor container, one new project.
const SPARE_PORTS: usize = 3;
/// Parallel create + start of the raw-API floor.
const FLOOR_PARALLEL: usize = 16;
const TIMEOUT: Duration = Duration::from_secs(120);
/// A spawn answered 503 `busy` (64 writes in flight) or refused is asked again after this
/// long, as a client with a short backoff would (at 20 ms, 136 waiting clients sent 130,000
/// requests in a burst of 200 and took the CPU the manager and Docker needed).
const RETRY: Duration = Duration::from_millis(250);

/// The manager under test, its counting proxy and its API.
struct Host {
    manager: Option<Manager>,
    proxy: Proxy,
    cfg: ManagerConfig,
    api: SocketAddr,
    key: String,
    /// Docker health check interval of every container, the manager's and the floor's.
    healthcheck_secs: u64,
}

impl Host {
    async fn start(
        bench: &Bench,
        concurrency: usize,
        healthcheck_secs: u64,
    ) -> Result<Host, String> {
        let proxy = Proxy::start(&bench.root.join("scale-docker.sock"))
            .map_err(|e| format!("proxy: {e}"))?;
        let key = crate::launch::api_key();
        let cfg = ManagerConfig {
            state_dir: bench.dir("scale/state"),
            config_dir: bench.dir("scale/config"),
            concurrency,
            resync_secs: 30,
            docker_host: Some(proxy.docker_host()),
            api_key: Some(key.clone()),
            log_file: bench.root.join("scale/manager.log"),
            metrics: false,
            env: vec![("PGM_HEALTHCHECK_SECS".into(), healthcheck_secs.to_string())],
        };
        let mut manager = Manager::start(bench, &cfg).await?;
        manager.wait_log(FIRST_RECONCILE, TIMEOUT).await?;
        let api = manager.api.expect("the API is on");
        Ok(Host {
            manager: Some(manager),
            proxy,
            cfg,
            api,
            key,
            healthcheck_secs,
        })
    }

    /// Stops the manager (containers keep running) and starts it again; returns when it
    /// started and when it logged its first full reconcile.
    async fn restart(&mut self, bench: &Bench) -> Result<(Instant, Instant), String> {
        if let Some(manager) = self.manager.take() {
            manager.stop().await;
        }
        let mut manager = Manager::start(bench, &self.cfg).await?;
        let started = manager.started;
        let reconciled = manager.wait_log(FIRST_RECONCILE, TIMEOUT).await?;
        self.api = manager.api.expect("the API is on");
        self.manager = Some(manager);
        Ok((started, reconciled))
    }

    fn manager(&self) -> &Manager {
        self.manager.as_ref().expect("the manager runs")
    }

    fn write(&self, project: &str, version: u32, enabled: bool) {
        let text = state_text(project, &secret(project, version), enabled);
        write_state(&self.cfg.state_dir, project, &text);
    }

    fn remove(&self, project: &str) {
        let _ = std::fs::remove_file(self.cfg.state_dir.join(format!("{project}.toml")));
    }

    async fn down(mut self, bench: &Bench) {
        if let Some(manager) = self.manager.take() {
            manager.retire().await;
        }
        remove_all(bench, Who::Manager).await;
    }
}

/// Removes an instance's containers, 16 at a time (the shared helper's 4 take minutes for a
/// thousand).
async fn remove_all(bench: &Bench, who: Who) {
    use bollard::query_parameters::RemoveContainerOptionsBuilder;
    for _ in 0..5 {
        let ids: Vec<String> = bench.containers(who).await.into_values().collect();
        if ids.is_empty() {
            return;
        }
        stream::iter(ids)
            .for_each_concurrent(16, |id| async move {
                let options = RemoveContainerOptionsBuilder::default().force(true).build();
                let remove = bench.docker.remove_container(&id, Some(options));
                let _ = tokio::time::timeout(Duration::from_secs(60), remove).await;
            })
            .await;
    }
}

/// Waits until the instance has exactly `n` containers.
async fn containers_become(bench: &Bench, who: Who, n: usize) -> Result<(), String> {
    let done = poll_until(TIMEOUT * 3, Duration::from_millis(500), || async {
        bench.containers(who).await.len() == n
    })
    .await;
    done.then_some(())
        .ok_or_else(|| format!("the {who:?} containers never became {n}"))
}

// ---------------------------------------------------------------------------------------------
// Where a bulk's CPU went

/// CPU time so far, in seconds: the whole machine's busy and idle time (`/proc/stat`), the
/// bench's own process (its watch's probes), the daemon, its containerd, and the manager.
struct CpuSplit {
    busy: f64,
    idle: f64,
    bench: f64,
    dockerd: f64,
    containerd: f64,
    manager: f64,
}

impl CpuSplit {
    fn now(manager: Option<u32>) -> CpuSplit {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let hz = clock_ticks() as f64;
        let tick = |i: usize| ticks.get(i).copied().unwrap_or(0.0) / hz;
        // user nice system idle iowait irq softirq steal
        let (idle, busy) = (
            tick(3) + tick(4),
            tick(0) + tick(1) + tick(2) + tick(5) + tick(6) + tick(7),
        );
        let secs = |pid: Option<u32>| pid.map_or(0.0, |p| cpu_time(p).as_secs_f64());
        let dockerd = dockerd();
        // The daemon's own containerd: its child, or the machine's one.
        let containerd = dockerd
            .map(|d| command_output("pgrep", &["-P", &d.to_string(), "containerd"]))
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| command_output("pidof", &["containerd"]))
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok());
        CpuSplit {
            busy,
            idle,
            bench: secs(Some(std::process::id())),
            dockerd: secs(dockerd),
            containerd: secs(containerd),
            manager: secs(manager),
        }
    }

    /// What was spent since `before`, in words.
    fn since(&self, before: &CpuSplit) -> String {
        let busy = self.busy - before.busy;
        let all = busy + self.idle - before.idle;
        let parts = [
            ("dockerd", self.dockerd - before.dockerd),
            ("containerd", self.containerd - before.containerd),
            ("manager", self.manager - before.manager),
            ("bench", self.bench - before.bench),
        ];
        let named: f64 = parts.iter().map(|(_, v)| v).sum();
        let mut words = format!(
            "CPU busy {busy:.0} of {all:.0} core-s ({:.0} %)",
            busy / all.max(1e-9) * 100.0
        );
        for (name, v) in parts.iter().filter(|(_, v)| *v > 0.0) {
            words.push_str(&format!(", {name} {v:.1}"));
        }
        words.push_str(&format!(
            ", the rest (containers, shims, runc, kernel) {:.1}",
            busy - named
        ));
        words
    }
}

// ---------------------------------------------------------------------------------------------
// Memory

/// The dockerd the bench talks to: the one serving `DOCKER_HOST`'s socket when that names a
/// private daemon, else the machine's own (the one without a data root of its own).
fn dockerd() -> Option<u32> {
    let private = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_owned))
        .filter(|socket| socket != "/var/run/docker.sock");
    command_output("pidof", &["dockerd"])
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            match &private {
                Some(socket) => cmdline.contains(socket.as_str()),
                None => !cmdline.contains("--data-root"),
            }
        })
}

fn proc_field_kib(path: &str, name: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// (containerd shims, their summed PSS in KiB): one shim per running container.
fn shims() -> (usize, u64) {
    let pids: Vec<u32> = command_output("pgrep", &["-f", "containerd-shim"])
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    let pss = pids
        .iter()
        .map(|p| proc_field_kib(&format!("/proc/{p}/smaps_rollup"), "Pss:"))
        .sum();
    (pids.len(), pss)
}

struct Memory {
    dockerd_rss_kib: u64,
    shims: (usize, u64),
    available_kib: u64,
}

impl Memory {
    fn now() -> Memory {
        Memory {
            dockerd_rss_kib: dockerd()
                .map(|p| proc_field_kib(&format!("/proc/{p}/status"), "VmRSS:"))
                .unwrap_or(0),
            shims: shims(),
            available_kib: proc_field_kib("/proc/meminfo", "MemAvailable:"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measures

/// `requests` GETs of `path` over 8 connections: (requests/s, p50 ms, p99 ms).
/// A load of `requests` on `path` over 8 connections: req/s, p50 and p99 ms, and the manager's
/// own CPU per request in µs (its `/proc` times around the load: what the manager spends,
/// apart from what the machine around it does to the throughput).
async fn load(host: &Host, path: &str, requests: usize) -> Result<(f64, f64, f64, f64), String> {
    let headers = [("X-Internal-Key", host.key.as_str())];
    http::load(host.api, path, &headers, requests / 10, 8)
        .await
        .map_err(|e| e.to_string())?;
    let pid = host.manager.as_ref().expect("running").pid();
    let cpu_before = cpu_time(pid);
    let result = http::load(host.api, path, &headers, requests, 8)
        .await
        .map_err(|e| e.to_string())?;
    let cpu = cpu_time(pid).saturating_sub(cpu_before);
    if result.errors > 0 {
        return Err(format!("{} of the {path} requests failed", result.errors));
    }
    Ok((
        result.per_second(),
        quantile(&result.latencies_ms, 0.5),
        quantile(&result.latencies_ms, 0.99),
        cpu.as_secs_f64() * 1e6 / requests as f64,
    ))
}

/// What a burst of concurrent spawns showed.
struct Burst {
    n: usize,
    /// Per project: its 201 minus the moment the bench saw its container serve, ms.
    after_ready_ms: Vec<f64>,
    /// First and last 201, seconds after the requests went out.
    first_s: f64,
    last_s: f64,
    /// 503 `busy` answers (more than 64 writes in flight) and connections closed at once
    /// (over the API's cap), each retried after [`RETRY`].
    busy: usize,
    /// 504s (the API's 60 s timeout ran out in the queue), each asked again.
    timeouts: usize,
}

/// `n` spawns of new projects sent at once, each on its own connection.
async fn burst(bench: &Bench, host: &Host, n: usize, label: &str) -> Result<Burst, String> {
    let projects: Vec<String> = (0..n)
        .map(|i| format!("{}_{label}{i:03}", bench.tag))
        .collect();
    let mut watch = LiveWatch::start(bench, Who::Manager);
    let t0 = Instant::now();
    let (api, key) = (host.api, host.key.clone());
    let answers: Vec<Result<(String, Instant, usize, usize), String>> =
        stream::iter(projects.clone())
            .map(|project| {
                let key = key.clone();
                async move {
                    let body = serde_json::json!({
                        "projectId": project,
                        "jwtSecret": secret(&project, 1),
                        "authenticatorPassword": format!("pw-{project}"),
                    })
                    .to_string();
                    let headers = [
                        ("X-Internal-Key", key.as_str()),
                        ("Content-Type", "application/json"),
                    ];
                    let (mut busy, mut timeouts, mut conn) = (0, 0, None);
                    let deadline = Instant::now() + TIMEOUT * 5;
                    loop {
                        if Instant::now() > deadline {
                            return Err(format!(
                                "spawn {project}: no 201 within {:?}",
                                TIMEOUT * 5
                            ));
                        }
                        // Over the API's connection cap a connection is closed at once: retried
                        // like a 503.
                        if conn.is_none() {
                            conn = Conn::connect(api).await.ok();
                        }
                        let Some(open) = conn.as_mut() else {
                            busy += 1;
                            tokio::time::sleep(RETRY).await;
                            continue;
                        };
                        let answer = open
                            .request(
                                "POST",
                                "/internal/postgrest/spawn",
                                &headers,
                                Some(body.as_bytes()),
                            )
                            .await;
                        match answer {
                            Ok((201, _)) => return Ok((project, Instant::now(), busy, timeouts)),
                            // The API's timeout (60 s) ran out while the queue was long: the
                            // desired state is saved, and asking again waits again.
                            Ok((504, _)) => timeouts += 1,
                            Ok((503, answer))
                                if String::from_utf8_lossy(&answer).contains("busy") =>
                            {
                                busy += 1;
                                tokio::time::sleep(RETRY).await;
                            }
                            Ok((other, answer)) => {
                                return Err(format!(
                                    "spawn {project}: {other} {}",
                                    String::from_utf8_lossy(&answer)
                                ))
                            }
                            Err(_) => {
                                conn = None;
                                busy += 1;
                                tokio::time::sleep(RETRY).await;
                            }
                        }
                    }
                }
            })
            .buffer_unordered(n)
            .collect()
            .await;
    let answers = answers.into_iter().collect::<Result<Vec<_>, String>>()?;
    let wanted: BTreeSet<String> = projects.iter().cloned().collect();
    let (_, served) = watch.wait_all(&wanted, TIMEOUT).await?;
    let mut after_ready_ms: Vec<f64> = answers
        .iter()
        .map(|(project, answered, _, _)| {
            let ready = served[project].at;
            if *answered >= ready {
                (*answered - ready).as_secs_f64() * 1000.0
            } else {
                -(ready - *answered).as_secs_f64() * 1000.0
            }
        })
        .collect();
    after_ready_ms.sort_by(f64::total_cmp);
    let times: Vec<f64> = answers
        .iter()
        .map(|(_, at, _, _)| (*at - t0).as_secs_f64())
        .collect();
    Ok(Burst {
        n,
        after_ready_ms,
        first_s: times.iter().copied().fold(f64::MAX, f64::min),
        last_s: times.iter().copied().fold(0.0, f64::max),
        busy: answers.iter().map(|(_, _, b, _)| b).sum(),
        timeouts: answers.iter().map(|(_, _, _, t)| t).sum(),
    })
}

/// Creates and starts `projects`' containers through the Docker API, `FLOOR_PARALLEL` at a
/// time, through `proxy`; returns the time until the last one served.
async fn floor_bulk(bench: &Bench, host: &Host, projects: &[String]) -> Result<f64, String> {
    let (dir, proxy) = (bench.dir("scale/floor"), &host.proxy);
    let template = floor_template(bench, host, &dir);
    let specs: Vec<_> = projects
        .iter()
        .map(|p| baseline::prepare(&template, &dir, p, 1).container)
        .collect();
    let floor = Floor::new(Some(&proxy.docker_host())).await;
    // Uncached, as the manager's bulk: its containers take the addresses the bursts' left.
    let mut watch = LiveWatch::start_uncached(bench, Who::Floor);
    let cpu0 = CpuSplit::now(None);
    let t0 = Instant::now();
    let created: Vec<Result<String, String>> = stream::iter(&specs)
        .map(|spec| floor.create_start(spec))
        .buffer_unordered(FLOOR_PARALLEL)
        .collect()
        .await;
    if let Some(Err(e)) = created.iter().find(|r| r.is_err()) {
        return Err(format!("floor: {e}"));
    }
    let wanted: BTreeSet<String> = projects.iter().cloned().collect();
    let timeout = Duration::from_secs(120 + projects.len() as u64);
    let (last, _) = watch.wait_all(&wanted, timeout).await?;
    eprintln!("bench: scale: floor {}", CpuSplit::now(None).since(&cpu0));
    Ok((last - t0).as_secs_f64())
}

/// The floor's containers: the manager's spec, with the same health check setting.
fn floor_template(
    bench: &Bench,
    host: &Host,
    dir: &std::path::Path,
) -> postgrest_manager::render::Template {
    let mut template = baseline::template(bench, Who::Floor, dir);
    template.healthcheck_interval_secs = host.healthcheck_secs;
    template
}

fn summary(samples: &[f64]) -> String {
    Summary::of(samples).map_or("—".into(), |s| s.to_string())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(ctx: &mut Ctx) -> Result<(String, String), String> {
    let (n, files, idle, runs) = (
        ctx.opts.scale,
        ctx.opts.scale_files,
        ctx.opts.scale_idle,
        ctx.opts.runs.clamp(2, 5),
    );
    let bursts = ctx.opts.scale_bursts.clone();
    if n + SPARE_PORTS > BRIDGE_PORTS {
        return Err(format!(
            "--scale {n}: one Docker network is one Linux bridge, which holds at most \
             {BRIDGE_PORTS} ports; {n} containers plus {SPARE_PORTS} others do not fit"
        ));
    }
    let burst_ports = 10 + bursts.iter().sum::<usize>() + SPARE_PORTS;
    if burst_ports > BRIDGE_PORTS {
        return Err(format!(
            "--scale-bursts: 10 projects and {} spawned ones do not fit one bridge's \
             {BRIDGE_PORTS} ports",
            burst_ports - 10 - SPARE_PORTS
        ));
    }
    let provenance = ctx.provenance();
    let concurrency = ctx
        .opts
        .scale_concurrency
        .or(ctx.best_concurrency)
        .unwrap_or(4);
    let healthcheck_secs = ctx.opts.scale_healthcheck_secs;
    let bench = &ctx.bench;
    let mut host = Host::start(bench, concurrency, healthcheck_secs).await?;
    let result = phases(bench, &mut host, n, files, idle, runs, &bursts).await;
    // Printed before the mass removal, which has hung Docker 20.10 here twice: the numbers
    // survive a daemon that never comes back.
    if let Ok(body) = &result {
        eprintln!("bench: scale: results, before removing everything:\n{body}");
    }
    eprintln!("bench: scale: removing everything");
    host.down(bench).await;
    remove_all(bench, Who::Floor).await;
    let body = result?;
    Ok((
        format!(
            "7. Scale: {} running projects, {} files",
            thousands(n),
            thousands(files)
        ),
        format!("{provenance}\n{body}"),
    ))
}

async fn phases(
    bench: &Bench,
    host: &mut Host,
    n: usize,
    files: usize,
    idle: Duration,
    runs: usize,
    sizes: &[usize],
) -> Result<String, String> {
    let tag = &bench.tag;
    let mut out = String::new();
    let before = Memory::now();

    // 1. Ten projects, then the spawn bursts.
    eprintln!("bench: scale: 10 projects");
    let ten: Vec<String> = (0..10).map(|i| format!("{tag}_t{i:02}")).collect();
    let mut watch = LiveWatch::start(bench, Who::Manager);
    for p in &ten {
        host.write(p, 1, true);
    }
    watch
        .wait_all(&ten.iter().cloned().collect(), TIMEOUT)
        .await?;
    let one_at_10 = load(host, &format!("/internal/postgrest/{}", ten[3]), 20_000).await?;
    let control_at_10 = load(host, "/healthz", 20_000).await?;
    let list_at_10 = load(host, "/internal/postgrest", 5000).await?;
    let mut bursts = Vec::new();
    let labels: Vec<(usize, String)> = sizes
        .iter()
        .enumerate()
        .map(|(i, size)| (*size, format!("c{}", (b'a' + i as u8) as char)))
        .collect();
    for (size, label) in &labels {
        let size = *size;
        eprintln!("bench: scale: {size} concurrent spawns");
        let burst = burst(bench, host, size, label).await?;
        eprintln!(
            "bench: scale: {size} spawns: 201 − own /ready p50 {:.0} ms, p99 {:.0} ms, first {:.1} s, last {:.1} s, {} busy, {} timeouts",
            quantile(&burst.after_ready_ms, 0.5),
            quantile(&burst.after_ready_ms, 0.99),
            burst.first_s,
            burst.last_s,
            burst.busy,
            burst.timeouts
        );
        bursts.push(burst);
    }
    for (size, label) in &labels {
        for i in 0..*size {
            host.remove(&format!("{tag}_{label}{i:03}"));
        }
    }
    for p in &ten {
        host.remove(p);
    }
    containers_become(bench, Who::Manager, 0).await?;

    // 2. Bulk, cold: the floor, then the manager.
    eprintln!("bench: scale: floor, {n} containers {FLOOR_PARALLEL} at a time");
    let floor_projects: Vec<String> = (0..n).map(|i| format!("{tag}_sf{i:04}")).collect();
    host.proxy.take();
    let floor_s = floor_bulk(bench, host, &floor_projects).await?;
    let floor_calls = host.proxy.take();
    eprintln!(
        "bench: scale: floor {floor_s:.1} s, {}",
        floor_calls.describe()
    );
    let at_n = Memory::now();
    let sample = bench
        .containers(Who::Floor)
        .await
        .into_values()
        .next()
        .unwrap_or_default();
    let stats = command_output(
        "docker",
        &[
            "stats",
            "--no-stream",
            "--format",
            "{{.MemUsage}} {{.CPUPerc}}",
            &sample,
        ],
    );
    remove_all(bench, Who::Floor).await;

    eprintln!("bench: scale: manager, {n} files at once");
    let projects: Vec<String> = (0..n).map(|i| format!("{tag}_s{i:04}")).collect();
    // Uncached, as the floor's: the floor's thousand addresses are all reused here.
    let mut watch = LiveWatch::start_uncached(bench, Who::Manager);
    host.proxy.take();
    let manager_pid = host.manager.as_ref().map(|m| m.pid());
    let cpu0 = CpuSplit::now(manager_pid);
    let t0 = Instant::now();
    for p in &projects {
        host.write(p, 1, true);
    }
    let (last, found) = watch
        .wait_all(
            &projects.iter().cloned().collect(),
            Duration::from_secs(120 + n as u64),
        )
        .await?;
    let manager_s = (last - t0).as_secs_f64();
    let manager_calls = host.proxy.take();
    eprintln!(
        "bench: scale: manager {manager_s:.1} s, {}",
        manager_calls.describe()
    );
    eprintln!(
        "bench: scale: manager {}",
        CpuSplit::now(manager_pid).since(&cpu0)
    );
    let ips: BTreeMap<String, IpAddr> = found.into_iter().map(|(p, l)| (p, l.ip)).collect();
    // Each container's first healthcheck, 30 s after its start, wakes the loop once.
    tokio::time::sleep(Duration::from_secs(35)).await;

    // 3a. The API with n running.
    let one_at_n = load(
        host,
        &format!("/internal/postgrest/{}", projects[n / 2]),
        20_000,
    )
    .await?;
    let control_at_n = load(host, "/healthz", 20_000).await?;
    let list_at_n = load(host, "/internal/postgrest", 1000).await?;

    // 3b. One reload among n.
    // 3b. One reload among n, against the same reload done by hand on a floor container of
    // its own (rewrite its rendered config, SIGUSR2 through the API), alternating, as the
    // reload scenario does at 200: what the daemon's own calls cost at this size shows.
    let ids = bench.containers(Who::Manager).await;
    let floor = Floor::new(Some(&host.proxy.docker_host())).await;
    let reload_dir = bench.dir("scale/reload");
    let reload_template = floor_template(bench, host, &reload_dir);
    let floor_project = format!("{tag}_rf");
    let mut floor_watch = LiveWatch::start_uncached(bench, Who::Floor);
    let rendered = baseline::prepare(&reload_template, &reload_dir, &floor_project, 1);
    let floor_container = floor.create_start(&rendered.container).await?;
    let floor_ip = floor_watch.wait_one(&floor_project, TIMEOUT).await?.ip;
    let mut reload_ms = Vec::new();
    let mut reload_floor_ms = Vec::new();
    let mut reload_calls = Vec::new();
    let mut touched = BTreeSet::new();
    let mut reloaded = BTreeSet::new();
    for run in 0..=runs {
        let version = run as u32 + 2;
        let project = &projects[(run * 37 + 11) % n];
        let (mut elapsed, mut floor_elapsed, mut calls) = (0.0, 0.0, Calls::default());
        for manager_turn in [run % 2 == 0, run % 2 != 0] {
            if manager_turn {
                let new_secret = secret(project, version);
                warm(ips[project], &secret(project, 1)).await?;
                host.proxy.take();
                let t = Instant::now();
                write_state(
                    &host.cfg.state_dir,
                    project,
                    &state_text(project, &new_secret, true),
                );
                if !live::wait_accepted(ips[project], &http::token(&new_secret), TIMEOUT).await {
                    return Err(format!("{project} never accepted its new secret"));
                }
                elapsed = ms(t.elapsed());
                tokio::time::sleep(Duration::from_secs(1)).await;
                calls = host.proxy.take();
            } else {
                let floor_token = http::token(&secret(&floor_project, version));
                warm(floor_ip, &secret(&floor_project, version - 1)).await?;
                let t = Instant::now();
                baseline::prepare(&reload_template, &reload_dir, &floor_project, version);
                floor.signal(&floor_container, "SIGUSR2").await?;
                if !live::wait_accepted(floor_ip, &floor_token, TIMEOUT).await {
                    return Err("the floor container never accepted its new secret".into());
                }
                floor_elapsed = ms(t.elapsed());
                host.proxy.take();
            }
        }
        eprintln!(
            "bench: scale: reload run {run}: {elapsed:.1} ms, {}; floor {floor_elapsed:.1} ms",
            calls.describe()
        );
        if run > 0 {
            reload_ms.push(elapsed);
            reload_floor_ms.push(floor_elapsed);
            reload_calls.push(calls.total() as f64);
            touched.extend(written_containers(&calls));
            reloaded.extend(ids.get(project).cloned());
        }
    }
    remove_all(bench, Who::Floor).await;
    let others_touched = touched.difference(&reloaded).count();

    // 3c. One new project while n run, against one floor container, alternating.
    let floor_dir = bench.dir("scale/one");
    let template = floor_template(bench, host, &floor_dir);
    let (mut new_ms, mut one_floor_ms) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        for manager_turn in [run % 2 == 0, run % 2 != 0] {
            if manager_turn {
                let project = format!("{tag}_n{run}");
                let mut watch = LiveWatch::start_uncached(bench, Who::Manager);
                let t = Instant::now();
                host.write(&project, 1, true);
                let live = watch.wait_one(&project, TIMEOUT).await?;
                if run > 0 {
                    new_ms.push(ms(live.at - t));
                }
                host.remove(&project);
                containers_become(bench, Who::Manager, n).await?;
            } else {
                let project = format!("{tag}_nf{run}");
                let mut watch = LiveWatch::start_uncached(bench, Who::Floor);
                let rendered = baseline::prepare(&template, &floor_dir, &project, 1);
                let t = Instant::now();
                floor.create_start(&rendered.container).await?;
                let live = watch.wait_one(&project, TIMEOUT).await?;
                if run > 0 {
                    one_floor_ms.push(ms(live.at - t));
                }
                remove_all(bench, Who::Floor).await;
            }
        }
        eprintln!("bench: scale: new project run {run}: {new_ms:?} vs floor {one_floor_ms:?}");
    }

    // 3d. Adoption after a restart.
    eprintln!("bench: scale: adoption");
    let inventory_before = inventory(bench).await;
    let (mut adopt_ms, mut adopt_calls) = (Vec::new(), Vec::new());
    let mut adopt_writes = 0;
    let mut example = Calls::default();
    for run in 0..runs {
        host.proxy.take();
        let (started, reconciled) = host.restart(bench).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let calls = host.proxy.take();
        eprintln!(
            "bench: scale: adoption run {run}: {:.0} ms, {}",
            ms(reconciled - started),
            calls.describe()
        );
        adopt_ms.push(ms(reconciled - started));
        adopt_calls.push(calls.total() as f64);
        adopt_writes += written_containers(&calls).len();
        example = calls;
    }
    let (recreated, restarted) = changed(&inventory_before, &inventory(bench).await);

    // 3e. Idle with `files` files, the rest disabled.
    eprintln!("bench: scale: idle with {files} files");
    for i in n..files {
        host.write(&format!("{tag}_i{i:05}"), 1, false);
    }
    host.restart(bench).await?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let pid = host.manager().pid();
    host.proxy.take();
    let actions0 = host.manager().count_lines(" done");
    let cpu0 = cpu_time(pid);
    let t = Instant::now();
    tokio::time::sleep(idle).await;
    let cpu = cpu_time(pid) - cpu0;
    let idle_elapsed = t.elapsed();
    let idle_calls = host.proxy.take();
    let (rss, hwm) = host.manager().memory_kib();
    let idle_actions = host.manager().count_lines(" done") - actions0;
    let resyncs = idle_elapsed.as_secs_f64() / host.cfg.resync_secs as f64;

    let per_container = |now: &Memory| {
        let containers = now.shims.0.saturating_sub(before.shims.0).max(1) as f64;
        (
            (now.dockerd_rss_kib as f64 - before.dockerd_rss_kib as f64) / containers,
            (now.shims.1 as f64 - before.shims.1 as f64) / containers,
            (before.available_kib as f64 - now.available_kib as f64) / containers,
        )
    };
    let (dockerd_each, shim_each, available_each) = per_container(&at_n);
    out.push_str(&format!(
        "What one test-double container costs, from the floor's {n} running (the machine is \
         shared: other runs' containers come and go, so these are deltas over the whole \
         host): `docker stats` of one: {stats}; dockerd RSS {:.0} → {:.0} MB ({:.0} KiB per \
         container); containerd shims {} → {} ({:.0} KiB PSS each); MemAvailable fell \
         {:.0} KiB per container.\n\n",
        before.dockerd_rss_kib as f64 / 1024.0,
        at_n.dockerd_rss_kib as f64 / 1024.0,
        dockerd_each,
        before.shims.0,
        at_n.shims.0,
        shim_each,
        available_each,
    ));
    out.push_str("| measure | manager | baseline, same run |\n|---|---|---|\n");
    for burst in &bursts {
        out.push_str(&format!(
            "| {} concurrent spawns: each 201 − its own container serving (bench's `/ready` poll), p50 / p99 / max | {:.0} / {:.0} / {:.0} ms (201s from {:.1} s to {:.1} s; {} `busy` 503s or refused connections retried, {} 504s asked again) | — |\n",
            burst.n,
            quantile(&burst.after_ready_ms, 0.5),
            quantile(&burst.after_ready_ms, 0.99),
            burst.after_ready_ms.last().copied().unwrap_or(0.0),
            burst.first_s,
            burst.last_s,
            burst.busy,
            burst.timeouts,
        ));
    }
    out.push_str(&format!(
        "| bulk, cold: {n} files at once → all serving (PGM_CONCURRENCY={}, PGM_HEALTHCHECK_SECS={} for both) | {manager_s:.1} s ({} Docker calls) | raw API create + start, {FLOOR_PARALLEL} in parallel: {floor_s:.1} s ({} calls); ×{:.2} |\n",
        host.cfg.concurrency,
        host.healthcheck_secs,
        manager_calls.total(),
        floor_calls.total(),
        manager_s / floor_s,
    ));
    out.push_str(&format!(
        "| `GET /internal/postgrest/<id>`, 8 connections: req/s, p50, p99; the manager's CPU per request | at {n}: {:.0}/s, {:.2} ms, {:.2} ms; {:.0} µs | at 10: {:.0}/s, {:.2} ms, {:.2} ms; {:.0} µs |\n",
        one_at_n.0, one_at_n.1, one_at_n.2, one_at_n.3, one_at_10.0, one_at_10.1, one_at_10.2, one_at_10.3,
    ));
    out.push_str(&format!(
        "| control: `GET /healthz` (no project looked at), 8 connections: req/s, p50, p99; the manager's CPU per request | at {n}: {:.0}/s, {:.2} ms, {:.2} ms; {:.0} µs | at 10: {:.0}/s, {:.2} ms, {:.2} ms; {:.0} µs |\n",
        control_at_n.0, control_at_n.1, control_at_n.2, control_at_n.3, control_at_10.0, control_at_10.1, control_at_10.2, control_at_10.3,
    ));
    out.push_str(&format!(
        "| `GET /internal/postgrest`, 8 connections: req/s, p50, p99; the manager's CPU per request | at {n}: {:.0}/s, {:.2} ms, {:.2} ms; {:.0} µs | at 10: {:.0}/s, {:.2} ms, {:.2} ms; {:.0} µs |\n",
        list_at_n.0, list_at_n.1, list_at_n.2, list_at_n.3, list_at_10.0, list_at_10.1, list_at_10.2, list_at_10.3,
    ));
    out.push_str(&format!(
        "| one reload among {n}: ms to the new secret in force; Docker calls; other containers written to | {}; {} calls; **{others_touched}** | the same reload by hand on a container of its own (config rewritten, SIGUSR2 through the API): {}; the 200-project figure: BENCHMARKS.md's reload block |\n",
        summary(&reload_ms),
        summary(&reload_calls),
        summary(&reload_floor_ms),
    ));
    out.push_str(&format!(
        "| one new project while {n} run: file → serving, ms | {} | one raw-API create + start: {} (×{:.2}) |\n",
        summary(&new_ms),
        summary(&one_floor_ms),
        Summary::of(&new_ms).map_or(0.0, |m| m.median)
            / Summary::of(&one_floor_ms).map_or(1.0, |f| f.median),
    ));
    out.push_str(&format!(
        "| adoption: restart → first full reconcile, ms; Docker calls; containers recreated / restarted / written to (signal, start, stop, remove) | {}; {}; {recreated} / {restarted}; {adopt_writes} | — |\n",
        summary(&adopt_ms),
        summary(&adopt_calls),
    ));
    out.push_str(&format!(
        "| idle, {files} files ({n} running), {:.0} s: CPU; RSS (peak); Docker calls per resync; actions | {:.3}% of one core; {:.1} MB ({:.1} MB); {:.1} ({}); {idle_actions} | — |\n\n",
        idle_elapsed.as_secs_f64(),
        cpu.as_secs_f64() / idle_elapsed.as_secs_f64() * 100.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        idle_calls.total() as f64 / resyncs,
        idle_calls.describe(),
    ));
    out.push_str(&format!(
        "Calls of the last adoption (start-up + 2 s): {}.\n",
        example.describe()
    ));
    Ok(out)
}
