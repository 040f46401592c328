//! A Docker daemon of the test's own, for tests that kill and restart Docker: never the
//! machine's daemon, which every other test uses. Started as
//! `../shared/docs/private-docker-daemon.md` describes: in a network namespace of its own
//! (`nsenter --net`, never in the host's namespace, where it would take over the host's
//! bridges and iptables), with its own data root, exec root, socket, pid file and containerd
//! namespaces under `/tmp/pgm-dockerd-*`.
//!
//! [`PrivateDaemon`] is a drop guard: dropping it (also while a failed test unwinds) removes
//! its containers, stops the daemon by its pid file, unmounts what it mounted, removes its
//! directory and deletes its namespace. Everything is named `pgm-dockerd-*`, which is what
//! `.ci/run`'s leftover check looks for.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{image, wait_until_for, COUNTER};

/// How long the daemon may take to answer after a (re)start: about 2 s when the machine is
/// idle, much more with other test binaries running on its two cores.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A running (or, between [`PrivateDaemon::kill`] and [`PrivateDaemon::restart`], killed)
/// private `dockerd`.
pub struct PrivateDaemon {
    /// `/tmp/pgm-dockerd-<pid>x<n>`: config, data root, exec root, socket, pid file, log.
    pub dir: PathBuf,
    /// The network namespace, `pgm-dockerd-<pid>x<n>`, as `/run/netns/<netns>`.
    pub netns: String,
    /// Suffix of its containerd namespaces, so its objects never mix with the machine's.
    tag: String,
    child: Option<Child>,
    restarts: usize,
}

impl PrivateDaemon {
    /// Starts a daemon and loads the test image into it (from the machine's daemon, with
    /// `docker save` and `docker load`: there is no registry here).
    pub fn start() -> PrivateDaemon {
        sweep_dead_runs();
        let tag = format!(
            "{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let dir = PathBuf::from(format!("/tmp/pgm-dockerd-{tag}"));
        let netns = format!("pgm-dockerd-{tag}");
        // The guard exists before anything is created, so a failure below still cleans up.
        let mut daemon = PrivateDaemon {
            dir,
            netns,
            tag,
            child: None,
            restarts: 0,
        };
        fs::create_dir(&daemon.dir).expect("creating the private daemon's directory");
        // The machine's /etc/docker/daemon.json sets data-root and storage-driver, which
        // clash with the flags below: an empty config of its own.
        fs::write(daemon.dir.join("daemon.json"), "{}").unwrap();
        run_ok(Command::new("ip").args(["netns", "add", &daemon.netns]));
        run_ok(
            Command::new("nsenter")
                .arg(format!("--net={}", daemon.netns_path().display()))
                .args(["ip", "link", "set", "lo", "up"]),
        );
        daemon.spawn();
        daemon.wait_answers();
        daemon.load(&image());
        daemon
    }

    /// Copies `image` from the tests' daemon (`DOCKER_HOST`, else the machine's) into this one,
    /// from this process's one save of it ([`archive`]).
    pub fn load(&self, image: &str) {
        let archive = archive(image);
        let mut load = self
            .command(&["load", "-q"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker load runs");
        let mut stdin = load.stdin.take().expect("docker load's stdin");
        // Written from a thread of its own while the output is read: a load that reports
        // while reading would otherwise block on a full pipe.
        let writer = std::thread::spawn(move || stdin.write_all(&archive));
        let loaded = load.wait_with_output().expect("docker load ends");
        let written = writer.join().expect("the archive's writer");
        assert!(
            loaded.status.success(),
            "docker load {image} into {}: {}",
            self.netns,
            String::from_utf8_lossy(&loaded.stderr)
        );
        written.expect("writing the archive to docker load");
    }

    /// `unix://<dir>/docker.sock`, for `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    /// `/run/netns/<netns>`, for `nsenter --net=`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    /// The daemon's pid, from its pid file (`None` while it is down).
    pub fn pid(&self) -> Option<u32> {
        fs::read_to_string(self.dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILL, as a crash would: its containers keep running under their shims, the pid file
    /// stays behind. Returns once the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the daemon again with the same flags (it reattaches to its containers) and
    /// waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart only a killed daemon");
        self.restarts += 1;
        // The daemon's containerd died with it (its parent-death signal), but nothing reaps
        // it here (PID 1 of this machine does not), so its pid file names a zombie that
        // `kill -0` still finds: the new daemon would wait for that containerd's socket
        // forever instead of starting its own. Its containers run on under their shims.
        let _ = fs::remove_file(self.dir.join("exec/containerd/containerd.pid"));
        self.spawn();
        self.wait_answers();
    }

    /// `docker <args>` against this daemon.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker");
        command.args(args).env("DOCKER_HOST", self.host());
        command
    }

    /// `docker <args>` against this daemon, run to completion.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .expect("docker runs")
    }

    /// Names of the containers (all states) carrying `label` (`key=value`).
    pub fn containers(&self, label: &str) -> Vec<String> {
        let out = self.docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label={label}"),
            "--format",
            "{{.Names}} {{.State}}",
        ]);
        assert!(
            out.status.success(),
            "docker ps on the private daemon: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let d = |name: &str| self.dir.join(name).display().to_string();
        // nsenter execs dockerd, so the child's pid is the daemon's.
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path().display()))
            .arg("dockerd")
            .args(["--config-file", &d("daemon.json")])
            .args(["--data-root", &d("root")])
            .args(["--exec-root", &d("exec")])
            .args(["-H", &format!("unix://{}", d("docker.sock"))])
            .args(["--pidfile", &d("pid")])
            .arg("--storage-driver=vfs")
            .args(["--containerd-namespace", &format!("pgm{}", self.tag)])
            .args([
                "--containerd-plugins-namespace",
                &format!("pgmp{}", self.tag),
            ])
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nsenter dockerd starts");
        self.child = Some(child);
    }

    fn wait_answers(&mut self) {
        wait_until_for(
            &format!("the private dockerd to answer (start {})", self.restarts),
            START_TIMEOUT,
            || {
                if let Some(status) = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    panic!(
                        "the private dockerd exited ({status}); its log ends:\n{}",
                        super::tail(
                            &fs::read_to_string(self.dir.join("log")).unwrap_or_default(),
                            30
                        )
                    );
                }
                self.docker(&["info", "--format", "{{.ID}}"])
                    .status
                    .success()
                    .then_some(())
            },
        );
    }
}

impl Drop for PrivateDaemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Its containers first (the daemon stops them more gently than a kill of the
            // shims would), then the daemon by its pid file, gently, then for sure.
            let ids = self.docker(&["ps", "-aq"]);
            let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.iter().map(String::as_str));
                let _ = self.docker(&args);
            }
            if let Some(pid) = self.pid() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut child = self.child.take().unwrap();
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // A containerd left from a killed daemon (the restarted one starts its own) would
        // keep the mounts busy: end every process whose command line names this directory.
        kill_processes_naming(&self.dir);
        // dockerd bind-mounts its data root onto itself and keeps containers' network
        // namespaces as nsfs mounts under its exec root: unmount everything under the
        // directory, deepest first.
        let mut mounts = mounts_under(&self.dir);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            let _ = Command::new("umount")
                .arg(&mount)
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.dir);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .stderr(Stdio::null())
            .status();
    }
}

/// `docker save image`, taken once per test process and one at a time: the daemon may fail
/// two saves at once of images that share a layer (moby/moby#31017, seen on overlay2), as
/// ours do, and the swarm suite's tests each saved the same images at once.
fn archive(image: &str) -> Arc<Vec<u8>> {
    static ARCHIVES: Mutex<BTreeMap<String, Arc<Vec<u8>>>> = Mutex::new(BTreeMap::new());
    // Held across the save: that is what keeps two saves from overlapping.
    let mut archives = ARCHIVES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(archive) = archives.get(image) {
        return Arc::clone(archive);
    }
    let saved = Command::new("docker")
        .args(["save", image])
        .output()
        .expect("docker save runs");
    assert!(
        saved.status.success(),
        "docker save {image}: {}",
        String::from_utf8_lossy(&saved.stderr)
    );
    let archive = Arc::new(saved.stdout);
    archives.insert(image.to_owned(), Arc::clone(&archive));
    archive
}

/// Cleans up after test processes that died without unwinding (SIGKILL, a crash), so their
/// daemons, mounts and namespaces do not pile up: every `/tmp/pgm-dockerd-<pid>x<n>` whose
/// test process `<pid>` is gone. Other names (a shell's `mktemp`) are left alone.
fn sweep_dead_runs() {
    let Ok(entries) = fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(tag) = name.strip_prefix("pgm-dockerd-") else {
            continue;
        };
        let Some((pid, n)) = tag.split_once('x') else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), n.parse::<u32>()) else {
            continue;
        };
        if pid == std::process::id() || running(pid) {
            continue;
        }
        // A guard without a child: the drop ends the leftover daemon by its pid file.
        let leftover = PrivateDaemon {
            dir: entry.path(),
            netns: name.clone(),
            tag: tag.to_owned(),
            child: None,
            restarts: 0,
        };
        // The pid file may be stale and its pid reused: only a process whose command line
        // names the directory is the leftover daemon.
        let dir = entry.path();
        let named = |pid: u32| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| names_dir(&String::from_utf8_lossy(&c), &dir))
        };
        if let Some(pid) = leftover.pid().filter(|&pid| named(pid)) {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && running(pid) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        drop(leftover);
        // A three-node swarm's bridge namespace is named after its first node
        // (`support::swarm::Cluster`).
        let _ = Command::new("ip")
            .args(["netns", "del", &format!("{name}hub")])
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether `pid` is a live process (not gone, not a zombie nobody reaped yet).
fn running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) state ...`: the state follows the last ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// Whether `cmdline` names a path under `dir`: `dir` followed by `/`, so the daemon of
/// `/tmp/pgm-dockerd-<pid>x1` is never taken for that of `.../<pid>x12`. Matching the bare
/// prefix did exactly that: dropping one test's daemon SIGKILLed another test's, started
/// later with a longer number. CI failed so in the swarm suite ("the private dockerd exited
/// (signal: 9)" in `Cluster::start`), and most likely twice before as "docker save failed":
/// a load whose daemon dies closes the pipe the save writes to.
fn names_dir(cmdline: &str, dir: &Path) -> bool {
    cmdline.contains(&format!("{}/", dir.display()))
}

/// SIGKILLs the processes whose command line names a path under `dir` (by pid: never a name
/// match, which could hit the machine's own daemon).
fn kill_processes_naming(dir: &Path) {
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if names_dir(&cmdline, dir) && pid != std::process::id() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// The mount points at or under `dir`, from `/proc/mounts`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter(|point| *point == prefix || point.starts_with(&format!("{prefix}/")))
        .map(str::to_owned)
        .collect()
}

fn run_ok(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
