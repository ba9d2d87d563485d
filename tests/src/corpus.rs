//! The corpora of `tests/corpus/` played against the real daemon, in real containers started
//! after it, on Docker and on containerd (see `tests/corpus/README.md`).
//!
//! - [`AttackCorpus`]: each behaviour's script in a fresh container of its own pod, through an
//!   exec session (`docker exec` / `ctr tasks exec`, no tty); the pod's alerts and decision.
//! - [`BenignCorpus`]: every workload started at once, probed on schedule as a kubelet would
//!   (with the probes in the pod's spec on the project's test API server), restarted, stopped;
//!   the alerts and contains of their pods per pod-hour.
//!
//! The daemon's output is read as it grows ([`OutputTail`]); only the records the reports need
//! are kept.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::{
    containerd::{Containerd, KubePod, random_container_id},
    docker::Dockerd,
};

/// The corpus image's name in both runtimes.
pub const IMAGE: &str = "detector-corpus/debian:bookworm";

/// Where the corpora live.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// A container's command: `{exec: [argv]}`, or `{shell: TEXT}` (`/bin/sh -c TEXT`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entrypoint {
    /// The argument vector.
    #[serde(default)]
    pub exec: Option<Vec<String>>,
    /// A shell text.
    #[serde(default)]
    pub shell: Option<String>,
}

impl Entrypoint {
    /// The argument vector the runtime starts.
    pub fn argv(&self) -> Vec<String> {
        match (&self.exec, &self.shell) {
            (Some(argv), _) => argv.clone(),
            (None, Some(text)) => vec!["/bin/sh".into(), "-c".into(), text.clone()],
            (None, None) => vec!["sleep".into(), "infinity".into()],
        }
    }
}

/// `attack.yaml`.
#[derive(Debug, Clone, Deserialize)]
pub struct AttackCorpus {
    /// Defaults of every behaviour.
    pub defaults: AttackDefaults,
    /// Files planted in every container before its script runs.
    pub fixtures: Vec<Fixture>,
    /// The behaviours.
    pub behaviours: Vec<Behaviour>,
}

/// `defaults` of `attack.yaml`.
#[derive(Debug, Clone, Deserialize)]
pub struct AttackDefaults {
    /// The script's wall-clock bound.
    pub timeout_s: u64,
}

/// A file planted from outside the container.
#[derive(Debug, Clone, Deserialize)]
pub struct Fixture {
    /// Path inside the container.
    pub path: String,
    /// Octal mode.
    pub mode: String,
    /// Content.
    pub content: String,
}

/// One attack behaviour.
#[derive(Debug, Clone, Deserialize)]
pub struct Behaviour {
    /// Unique id.
    pub id: String,
    /// One line.
    pub title: String,
    /// The workload, when the attack needs one.
    #[serde(default)]
    pub entrypoint: Option<Entrypoint>,
    /// Capabilities added to the defaults.
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// Commands the image must have.
    #[serde(default)]
    pub requires: Vec<String>,
    /// Never run, with the reason.
    #[serde(default)]
    pub skip: Option<String>,
    /// The script's wall-clock bound.
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// The attacker's script (bash).
    #[serde(default)]
    pub script: String,
    /// Rule ids, any of which detects it.
    pub expect: Vec<String>,
}

/// `benign.yaml`.
#[derive(Debug, Clone, Deserialize)]
pub struct BenignCorpus {
    /// Defaults of every workload.
    pub defaults: BenignDefaults,
    /// The workloads.
    pub workloads: Vec<Workload>,
}

/// `defaults` of `benign.yaml`.
#[derive(Debug, Clone, Deserialize)]
pub struct BenignDefaults {
    /// Stops and starts again.
    pub restarts: Restarts,
    /// Per workload and runtime.
    pub duration_s: u64,
    /// The CI subset's shorter run.
    pub ci: CiSubset,
}

/// How a workload is stopped and started again.
#[derive(Debug, Clone, Deserialize)]
pub struct Restarts {
    /// How many times.
    pub count: u32,
    /// SIGTERM, then SIGKILL after this.
    pub stop_timeout_s: u64,
    /// `after_exit`: started again once it exited (jobs); else evenly spaced.
    #[serde(default)]
    pub when: Option<String>,
}

/// The CI subset of the benign corpus.
#[derive(Debug, Clone, Deserialize)]
pub struct CiSubset {
    /// Per workload and runtime.
    pub duration_s: u64,
    /// Restarts.
    pub restarts: u32,
}

/// One benign workload.
#[derive(Debug, Clone, Deserialize)]
pub struct Workload {
    /// Unique id.
    pub id: String,
    /// Environment of the entrypoint.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its command.
    pub entrypoint: Entrypoint,
    /// Exec probes.
    #[serde(default)]
    pub probes: Vec<Probe>,
    /// Restarts, when not the defaults.
    #[serde(default)]
    pub restarts: Option<Restarts>,
    /// Duration, when not the default.
    #[serde(default)]
    pub duration_s: Option<u64>,
}

/// An exec probe.
#[derive(Debug, Clone, Deserialize)]
pub struct Probe {
    /// The probe's name.
    pub name: String,
    /// Its command.
    pub command: Vec<String>,
    /// Its period.
    pub interval_ms: u64,
}

/// Reads a corpus file.
pub fn load<T: for<'de> Deserialize<'de>>(name: &str) -> anyhow::Result<T> {
    let path = corpus_dir().join(name);
    let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    serde_yaml_ng::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// A container runtime the corpora run on.
pub trait Runtime {
    /// `docker` or `containerd`, as in container ids' schemes.
    fn name(&self) -> &'static str;
    /// Starts container `name` of `pod` running `argv`; its container id.
    fn start(
        &mut self,
        name: &str,
        pod: &KubePod,
        argv: &[String],
        env: &BTreeMap<String, String>,
        cap_add: &[String],
    ) -> anyhow::Result<String>;
    /// The container's main process on the node, if it runs.
    fn main_pid(&self, name: &str) -> anyhow::Result<u32>;
    /// `argv` in the running container, through the runtime, without a terminal.
    fn exec(&self, name: &str, argv: &[&str]) -> Command;
    /// Whether the container's main process still runs.
    fn running(&self, name: &str) -> bool;
    /// Stops it (SIGTERM, then SIGKILL after `grace`) and starts it again as the runtime's
    /// users do (Docker: the same container; containerd, as the kubelet: a new container in the
    /// same pod); its container id.
    fn restart(&mut self, name: &str, pod: &KubePod, grace: Duration) -> anyhow::Result<String>;
    /// Removes it, stopped or not.
    fn remove(&mut self, name: &str) -> anyhow::Result<()>;
}

/// Docker, with the corpus image imported.
pub struct DockerRuntime<'a> {
    /// The daemon.
    pub dockerd: &'a mut Dockerd,
}

impl Runtime for DockerRuntime<'_> {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn start(
        &mut self,
        name: &str,
        pod: &KubePod,
        argv: &[String],
        env: &BTreeMap<String, String>,
        cap_add: &[String],
    ) -> anyhow::Result<String> {
        let parent = self.dockerd.cgroup_parent(&pod.cgroupfs_parent());
        let mut args: Vec<String> = ["run", "-d", "--network", "none", "--cgroup-parent"]
            .map(String::from)
            .into();
        args.extend([parent, "--name".into(), name.into()]);
        for cap in cap_add {
            args.extend(["--cap-add".into(), cap.clone()]);
        }
        for (key, value) in env {
            args.extend(["-e".into(), format!("{key}={value}")]);
        }
        args.push(IMAGE.into());
        args.extend(argv.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.dockerd.cli(&args)
    }

    fn main_pid(&self, name: &str) -> anyhow::Result<u32> {
        let pid: u32 = self
            .dockerd
            .cli(&["inspect", "-f", "{{.State.Pid}}", name])?
            .parse()?;
        anyhow::ensure!(pid != 0, "{name} does not run");
        Ok(pid)
    }

    fn exec(&self, name: &str, argv: &[&str]) -> Command {
        let mut cmd = self.dockerd.command();
        cmd.arg("exec").arg(name).args(argv);
        cmd
    }

    fn running(&self, name: &str) -> bool {
        self.dockerd
            .cli(&["inspect", "-f", "{{.State.Running}}", name])
            .is_ok_and(|s| s == "true")
    }

    fn restart(&mut self, name: &str, _pod: &KubePod, grace: Duration) -> anyhow::Result<String> {
        let t = grace.as_secs().max(1).to_string();
        if self.running(name) {
            self.dockerd.cli(&["restart", "-t", &t, name])?;
        } else {
            self.dockerd.cli(&["start", name])?;
        }
        self.dockerd.cli(&["inspect", "-f", "{{.Id}}", name])
    }

    fn remove(&mut self, name: &str) -> anyhow::Result<()> {
        self.dockerd.cli(&["rm", "-f", name]).map(drop)
    }
}

/// containerd, with the corpus image imported. Containers are named by their id, as the
/// kubelet's are; [`Runtime`] names map to the current one.
pub struct ContainerdRuntime<'a> {
    /// The daemon.
    pub containerd: &'a mut Containerd,
    /// The current container of each name.
    running: BTreeMap<String, Started>,
}

/// What a containerd container was started with, to start its successor the same way.
#[derive(Debug, Clone)]
struct Started {
    id: String,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    caps: Vec<String>,
}

impl<'a> ContainerdRuntime<'a> {
    /// Over a running containerd.
    pub fn new(containerd: &'a mut Containerd) -> Self {
        Self {
            containerd,
            running: BTreeMap::new(),
        }
    }

    fn id(&self, name: &str) -> anyhow::Result<&str> {
        self.running
            .get(name)
            .map(|s| s.id.as_str())
            .with_context(|| format!("no container {name}"))
    }
}

impl Runtime for ContainerdRuntime<'_> {
    fn name(&self) -> &'static str {
        "containerd"
    }

    fn start(
        &mut self,
        name: &str,
        pod: &KubePod,
        argv: &[String],
        env: &BTreeMap<String, String>,
        cap_add: &[String],
    ) -> anyhow::Result<String> {
        let id = random_container_id();
        let mut options = Vec::new();
        for cap in cap_add {
            options.extend(["--cap-add".into(), format!("CAP_{cap}")]);
        }
        for (key, value) in env {
            options.extend(["--env".into(), format!("{key}={value}")]);
        }
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        let image = crate::image::normalize_reference(IMAGE);
        self.containerd
            .run_with(&id, &image, &pod.containerd_scope(&id), &options, &args)?;
        self.running.insert(
            name.to_owned(),
            Started {
                id: id.clone(),
                argv: argv.to_vec(),
                env: env.clone(),
                caps: cap_add.to_vec(),
            },
        );
        Ok(id)
    }

    fn main_pid(&self, name: &str) -> anyhow::Result<u32> {
        self.containerd.pid(self.id(name)?)
    }

    fn exec(&self, name: &str, argv: &[&str]) -> Command {
        let id = self.id(name).unwrap_or(name);
        // Exec ids are unique per container; the clock makes them so.
        let exec_id = format!(
            "x{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        self.containerd.exec_command(id, &exec_id, argv)
    }

    fn running(&self, name: &str) -> bool {
        self.id(name).is_ok_and(|id| {
            self.containerd
                .status(id)
                .is_ok_and(|s| s.as_deref() == Some("RUNNING"))
        })
    }

    fn restart(&mut self, name: &str, pod: &KubePod, grace: Duration) -> anyhow::Result<String> {
        let started = self
            .running
            .get(name)
            .cloned()
            .with_context(|| format!("no container {name}"))?;
        self.containerd.stop(&started.id, grace)?;
        self.containerd.rm(&started.id)?;
        self.start(name, pod, &started.argv, &started.env, &started.caps)
    }

    fn remove(&mut self, name: &str) -> anyhow::Result<()> {
        if let Some(started) = self.running.remove(name) {
            self.containerd.rm(&started.id)?;
        }
        Ok(())
    }
}

/// Runs `cmd` for at most `timeout`; its output (killed: status from the signal).
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> anyhow::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn")?;
    let deadline = Instant::now() + timeout;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

/// Plants `fixtures` in the container whose main process is `pid`, through its root as the
/// node sees it (`/proc/<pid>/root`): from outside the container's cgroup, not an event of it.
pub fn plant(pid: u32, fixtures: &[Fixture]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    for fixture in fixtures {
        let path = root.join(fixture.path.trim_start_matches('/'));
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        }
        fs::write(&path, &fixture.content).with_context(|| format!("write {}", path.display()))?;
        let mode = u32::from_str_radix(&fixture.mode, 8).unwrap_or(0o644);
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// The daemon's output file read as it grows: alert and verdict records by pod uid, and the
/// exec events the runner waits for.
pub struct OutputTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    /// Alert and verdict records, by the subject's pod uid.
    pub records: BTreeMap<String, Vec<Value>>,
    /// Exec events' argv joined by spaces, with their pod uid.
    pub execs: Vec<(String, String)>,
    /// Events per pod uid, and how many of them were the runtime's set-up.
    pub events: BTreeMap<String, (u64, u64)>,
}

impl OutputTail {
    /// Over the output file (which may not exist yet).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            offset: 0,
            partial: Vec::new(),
            records: BTreeMap::new(),
            execs: Vec::new(),
            events: BTreeMap::new(),
        }
    }

    /// Reads what was appended since the last call.
    pub fn poll(&mut self) -> anyhow::Result<()> {
        let Ok(mut file) = fs::File::open(&self.path) else {
            return Ok(());
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        for line in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let value: Value = serde_json::from_slice(line)
                .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(line)))?;
            if let Some(uid) = value["pod"]["uid"].as_str() {
                let counts = self.events.entry(uid.to_owned()).or_default();
                counts.0 += 1;
                if value["lineage"]["role"] == "runtime" {
                    counts.1 += 1;
                }
            }
            match value["kind"].as_str() {
                Some("alert" | "verdict") => {
                    let uid = value["subject"]["pod_uid"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned();
                    self.records.entry(uid).or_default().push(value);
                }
                Some("exec") => {
                    if let (Some(uid), Some(argv)) =
                        (value["pod"]["uid"].as_str(), value["argv"].as_array())
                    {
                        let argv: Vec<&str> = argv.iter().filter_map(Value::as_str).collect();
                        self.execs.push((uid.to_owned(), argv.join(" ")));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Polls until an exec of `argv` (joined by spaces) in pod `uid` was written, or `timeout`.
    pub fn wait_exec(&mut self, uid: &str, argv: &str, timeout: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            self.poll()?;
            if self.execs.iter().any(|(u, a)| u == uid && a == argv) {
                return Ok(true);
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Alert and verdict records of pod `uid`.
    pub fn of(&self, uid: &str) -> &[Value] {
        self.records.get(uid).map_or(&[], Vec::as_slice)
    }
}

/// What one behaviour did.
#[derive(Debug, Clone)]
pub struct AttackResult {
    /// The behaviour.
    pub id: String,
    /// The runtime.
    pub runtime: &'static str,
    /// Why it did not run.
    pub skipped: Option<String>,
    /// Its expected rules.
    pub expect: Vec<String>,
    /// Every rule that alerted for its pod.
    pub fired: BTreeSet<String>,
    /// The pod's highest decision: `none`, `log`, `alert` or `contain`.
    pub decision: String,
    /// The pod's highest score.
    pub score: f64,
    /// The script's exit status.
    pub status: Option<i32>,
}

impl AttackResult {
    /// An expected rule alerted.
    pub fn detected(&self) -> bool {
        self.expect.iter().any(|r| self.fired.contains(r))
    }

    /// It reached `alert` (or `contain`) on its own.
    pub fn alerted(&self) -> bool {
        matches!(self.decision.as_str(), "alert" | "contain")
    }
}

fn rank(decision: &str) -> u8 {
    match decision {
        "log" => 1,
        "alert" => 2,
        "contain" => 3,
        _ => 0,
    }
}

/// Commands the image lacks, for `requires`: looked up in its root file system.
pub fn missing_tools(rootfs: &Path, tools: &[String]) -> Vec<String> {
    tools
        .iter()
        .filter(|tool| {
            !["usr/bin", "usr/sbin", "bin", "sbin", "usr/local/bin"]
                .iter()
                .any(|dir| rootfs.join(dir).join(tool.as_str()).exists())
        })
        .cloned()
        .collect()
}

/// Plays `behaviour` in a fresh container of a pod of its own.
pub fn play_attack(
    runtime: &mut dyn Runtime,
    tail: &mut OutputTail,
    corpus: &AttackCorpus,
    behaviour: &Behaviour,
    rootfs: &Path,
    n: usize,
) -> anyhow::Result<AttackResult> {
    let mut result = AttackResult {
        id: behaviour.id.clone(),
        runtime: runtime.name(),
        skipped: None,
        expect: behaviour.expect.clone(),
        fired: BTreeSet::new(),
        decision: "none".into(),
        score: 0.0,
        status: None,
    };
    if let Some(reason) = &behaviour.skip {
        result.skipped = Some(reason.clone());
        return Ok(result);
    }
    let missing = missing_tools(rootfs, &behaviour.requires);
    if !missing.is_empty() {
        result.skipped = Some(format!("the image has no {}", missing.join(", ")));
        return Ok(result);
    }
    let pod = KubePod::new();
    let name = format!("atk-{n}");
    let argv = behaviour
        .entrypoint
        .as_ref()
        .map_or_else(|| vec!["sleep".into(), "infinity".into()], Entrypoint::argv);
    runtime.start(&name, &pod, &argv, &BTreeMap::new(), &behaviour.cap_add)?;
    let outcome = (|| {
        plant(runtime.main_pid(&name)?, &corpus.fixtures)?;
        let timeout = Duration::from_secs(behaviour.timeout_s.unwrap_or(corpus.defaults.timeout_s));
        let out = run_bounded(
            runtime.exec(&name, &["bash", "-c", &behaviour.script]),
            timeout,
        )?;
        result.status = out.status.code();
        // A marker after the script: once the daemon wrote it, it has scored what came before.
        let marker = format!("true corpus-done-{n}");
        let _ = run_bounded(
            runtime.exec(&name, &["true", &format!("corpus-done-{n}")]),
            Duration::from_secs(20),
        );
        if !tail.wait_exec(pod.uid(), &marker, Duration::from_secs(20))? {
            bail!(
                "the daemon never reported the end marker of {}",
                behaviour.id
            );
        }
        // Egress is sampled each second and a window is judged when the next sample closes
        // it: a spike needs two more samples after the script; the rest needs none.
        let settle = if behaviour.expect.iter().any(|r| r == "egress-spike") {
            Duration::from_millis(2500)
        } else {
            Duration::from_millis(300)
        };
        std::thread::sleep(settle);
        tail.poll()
    })();
    let removed = runtime.remove(&name);
    outcome?;
    removed?;
    for record in tail.of(pod.uid()) {
        if record["kind"] == "alert"
            && let Some(id) = record["rule"]["id"].as_str()
        {
            result.fired.insert(id.to_owned());
        }
        let decision = record["decision"].as_str().unwrap_or("none");
        if rank(decision) > rank(&result.decision) {
            result.decision = decision.to_owned();
        }
        result.score = result.score.max(record["score"].as_f64().unwrap_or(0.0));
    }
    Ok(result)
}

/// The attack report: recall, and each behaviour's outcome, as Markdown.
pub fn attack_report(results: &[AttackResult]) -> String {
    let ran: Vec<&AttackResult> = results.iter().filter(|r| r.skipped.is_none()).collect();
    let detected = ran.iter().filter(|r| r.detected()).count();
    let alerted = ran.iter().filter(|r| r.alerted()).count();
    let pct = |n: usize| {
        if ran.is_empty() {
            0.0
        } else {
            100.0 * n as f64 / ran.len() as f64
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "attack corpus: {} behaviours run, {} skipped; detected with an expected rule {} ({:.0}%), reached alert on their own {} ({:.0}%)\n",
        ran.len(),
        results.len() - ran.len(),
        detected,
        pct(detected),
        alerted,
        pct(alerted)
    );
    let _ = writeln!(
        out,
        "| behaviour | runtime | detected | decision | score | rules fired | expected |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for r in results {
        let fired: Vec<&str> = r.fired.iter().map(String::as_str).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.0} | {} | {} |",
            r.id,
            r.runtime,
            match (&r.skipped, r.detected()) {
                (Some(why), _) => format!("skipped: {why}"),
                (None, true) => "yes".into(),
                (None, false) => "no".into(),
            },
            r.decision,
            r.score,
            fired.join(", "),
            r.expect.join(", ")
        );
    }
    out
}

/// What the benign corpus gave on one runtime.
#[derive(Debug, Clone, Default)]
pub struct BenignReport {
    /// The runtime.
    pub runtime: String,
    /// Container starts.
    pub starts: u32,
    /// Exec probes run.
    pub probes: u32,
    /// Pod-hours of running containers.
    pub pod_hours: f64,
    /// Alert records of the workloads' pods, with their rule ids and workloads.
    pub alerts: Vec<(String, String)>,
    /// Contain verdicts of the workloads' pods.
    pub contains: u32,
    /// Events of the workloads' pods, and how many were the runtime's set-up.
    pub events: (u64, u64),
    /// Workloads whose pod made no event at all (the daemon did not see them).
    pub unseen: Vec<String>,
}

impl BenignReport {
    /// One Markdown paragraph.
    pub fn render(&self) -> String {
        let per_hour = |n: usize| {
            if self.pod_hours > 0.0 {
                n as f64 / self.pod_hours
            } else {
                0.0
            }
        };
        let mut out = format!(
            "benign corpus on {}: {} container starts, {} exec probes, {:.3} pod-hours, {} events ({} of them the runtime's set-up); {} alerts ({:.1} per pod-hour), {} contains ({:.1} per pod-hour)\n",
            self.runtime,
            self.starts,
            self.probes,
            self.pod_hours,
            self.events.0,
            self.events.1,
            self.alerts.len(),
            per_hour(self.alerts.len()),
            self.contains,
            per_hour(self.contains as usize)
        );
        for (workload, rule) in &self.alerts {
            let _ = writeln!(out, "  alert: {workload}: {rule}");
        }
        for workload in &self.unseen {
            let _ = writeln!(out, "  no event at all from {workload}");
        }
        out
    }
}

/// The project's test API server holding the benign pods, as a kubelet's node would.
pub trait PodRegistry {
    /// Registers (or updates) pod `uid` named `name` with one container `container` of id
    /// `container_id` under `scheme`, and its exec probes in the spec.
    fn put_pod(
        &self,
        uid: &str,
        name: &str,
        container: &str,
        scheme: &str,
        container_id: &str,
        probes: &[Vec<String>],
    );
}

/// Plays every workload at once on `runtime` for `duration`: each pod registered with its
/// probes in its spec, then its container started; probes run on schedule through the
/// runtime; `restarts` evenly spaced stops and starts per workload (a job's own count, started
/// again once it exited); then everything is removed and the pods' records read.
pub fn play_benign(
    runtime: &mut dyn Runtime,
    tail: &mut OutputTail,
    registry: &dyn PodRegistry,
    corpus: &BenignCorpus,
    duration: Duration,
    restarts: u32,
) -> anyhow::Result<BenignReport> {
    struct Live<'w> {
        workload: &'w Workload,
        pod: KubePod,
        name: String,
        started: Instant,
        restarts_left: u32,
        next_restart: Option<Instant>,
        after_exit: bool,
        next_probe: Vec<Instant>,
        ran: Duration,
    }
    let t0 = Instant::now();
    let mut report = BenignReport {
        runtime: runtime.name().into(),
        ..BenignReport::default()
    };
    let mut live = Vec::new();
    for (i, workload) in corpus.workloads.iter().enumerate() {
        let pod = KubePod::new();
        let name = format!("ben-{i}");
        let restarts_cfg = workload
            .restarts
            .as_ref()
            .unwrap_or(&corpus.defaults.restarts);
        let after_exit = restarts_cfg.when.as_deref() == Some("after_exit");
        let count = if after_exit {
            restarts_cfg.count
        } else {
            restarts
        };
        let every = duration / (count + 1);
        let probes: Vec<Vec<String>> = workload.probes.iter().map(|p| p.command.clone()).collect();
        // The pod first, then its container, as a kubelet does.
        registry.put_pod(
            pod.uid(),
            &format!("{}-{i}", workload.id),
            "main",
            runtime.name(),
            "",
            &probes,
        );
        let id = runtime.start(&name, &pod, &workload.entrypoint.argv(), &workload.env, &[])?;
        registry.put_pod(
            pod.uid(),
            &format!("{}-{i}", workload.id),
            "main",
            runtime.name(),
            &id,
            &probes,
        );
        report.starts += 1;
        let now = Instant::now();
        live.push(Live {
            workload,
            pod,
            name,
            started: now,
            restarts_left: count,
            next_restart: (!after_exit && count > 0).then(|| now + every),
            after_exit,
            next_probe: workload
                .probes
                .iter()
                .map(|p| now + Duration::from_millis(p.interval_ms))
                .collect(),
            ran: Duration::ZERO,
        });
    }
    let end = t0 + duration;
    while Instant::now() < end {
        let now = Instant::now();
        for l in &mut live {
            let every = duration / (l.restarts_left + 1).max(1);
            let exited = l.after_exit && !runtime.running(&l.name);
            let due_restart = l.next_restart.is_some_and(|t| now >= t);
            if (exited && l.restarts_left > 0) || due_restart {
                l.ran += now - l.started;
                let id = runtime.restart(&l.name, &l.pod, Duration::from_secs(10))?;
                let probes: Vec<Vec<String>> = l
                    .workload
                    .probes
                    .iter()
                    .map(|p| p.command.clone())
                    .collect();
                let i = l.name.trim_start_matches("ben-");
                registry.put_pod(
                    l.pod.uid(),
                    &format!("{}-{i}", l.workload.id),
                    "main",
                    runtime.name(),
                    &id,
                    &probes,
                );
                report.starts += 1;
                l.restarts_left -= 1;
                l.started = Instant::now();
                l.next_restart = (!l.after_exit && l.restarts_left > 0).then(|| l.started + every);
            }
            for (p, probe) in l.workload.probes.iter().enumerate() {
                if Instant::now() >= l.next_probe[p] && runtime.running(&l.name) {
                    let argv: Vec<&str> = probe.command.iter().map(String::as_str).collect();
                    let _ = run_bounded(runtime.exec(&l.name, &argv), Duration::from_secs(10));
                    report.probes += 1;
                    l.next_probe[p] = Instant::now() + Duration::from_millis(probe.interval_ms);
                }
            }
        }
        tail.poll()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    for l in &mut live {
        l.ran += Instant::now() - l.started;
        report.pod_hours += l.ran.as_secs_f64() / 3600.0;
    }
    // Let the daemon write what the last seconds gave, then stop everything.
    std::thread::sleep(Duration::from_secs(2));
    for l in &live {
        runtime.remove(&l.name)?;
    }
    std::thread::sleep(Duration::from_secs(1));
    tail.poll()?;
    for l in &live {
        let (events, setup) = tail.events.get(l.pod.uid()).copied().unwrap_or_default();
        report.events.0 += events;
        report.events.1 += setup;
        if events == 0 {
            report.unseen.push(l.workload.id.clone());
        }
        for record in tail.of(l.pod.uid()) {
            match record["kind"].as_str() {
                Some("alert") => report.alerts.push((
                    l.workload.id.clone(),
                    format!(
                        "{} ({}: {})",
                        record["rule"]["id"].as_str().unwrap_or("?"),
                        record["event"]["kind"].as_str().unwrap_or("?"),
                        event_summary(&record["event"])
                    ),
                )),
                Some("verdict") if record["decision"] == "contain" => report.contains += 1,
                _ => {}
            }
        }
    }
    Ok(report)
}

/// A short description of an event record for reports.
fn event_summary(event: &Value) -> String {
    let lineage = event["lineage"]["role"].as_str().unwrap_or("-");
    let what = match event["kind"].as_str() {
        Some("exec") => event["argv"].to_string(),
        Some("file") => event["path"].as_str().unwrap_or("").to_owned(),
        Some("connect") => format!(
            "{}:{}",
            event["daddr"].as_str().unwrap_or(""),
            event["dport"]
        ),
        _ => String::new(),
    };
    format!(
        "{what} by {} as {lineage}",
        event["comm"].as_str().unwrap_or("?")
    )
}

/// Namespace and node of the benign pods on the test API server.
const NAMESPACE: &str = "corpus";
const NODE: &str = "corpus-node";

impl PodRegistry for crate::apiserver::ApiServer {
    fn put_pod(
        &self,
        uid: &str,
        name: &str,
        container: &str,
        scheme: &str,
        container_id: &str,
        probes: &[Vec<String>],
    ) {
        let mut spec = serde_json::json!({"name": container, "image": IMAGE});
        // A container has at most these three probes.
        for (kind, command) in ["livenessProbe", "readinessProbe", "startupProbe"]
            .iter()
            .zip(probes)
        {
            spec[kind] = serde_json::json!({"exec": {"command": command}});
        }
        let status = if container_id.is_empty() {
            serde_json::json!({"phase": "Pending", "qosClass": "BestEffort"})
        } else {
            serde_json::json!({"phase": "Running", "qosClass": "BestEffort",
                "containerStatuses": [{"name": container, "containerID": format!("{scheme}://{container_id}"),
                    "image": IMAGE, "imageID": "", "ready": true, "restartCount": 0, "started": true,
                    "state": {"running": {}}}]})
        };
        self.put(
            "api/v1",
            "pods",
            serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": NAMESPACE, "uid": uid, "labels": {"app": name}},
                "spec": {"nodeName": NODE, "containers": [spec]},
                "status": status}),
        );
    }
}

/// What a corpus run plays.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The detector binary.
    pub detector: PathBuf,
    /// `docker`, `containerd`, or both.
    pub runtimes: Vec<String>,
    /// Attack behaviours to play by id (empty: every one).
    pub attacks: Vec<String>,
    /// Play the attack corpus at all.
    pub attack: bool,
    /// Play the benign corpus for this long per runtime.
    pub benign: Option<Duration>,
    /// Benign restarts per workload.
    pub restarts: u32,
    /// Where daemons, outputs and journals go.
    pub work_dir: PathBuf,
}

/// What a corpus run gave.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every behaviour played, per runtime.
    pub attacks: Vec<AttackResult>,
    /// The benign corpus per runtime.
    pub benign: Vec<BenignReport>,
}

/// Sets up what `plan` needs (the image, a private dockerd and containerd, the test API server,
/// the daemons) and plays it. Everything is cleaned up on return, failure or not.
pub fn run(plan: &Plan) -> anyhow::Result<Outcome> {
    use crate::{apiserver::ApiServer, daemon::Daemon, image::DebianImage};
    let image = DebianImage::ensure()?;
    let mut outcome = Outcome::default();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let api = tokio.block_on(ApiServer::start())?;
    api.put(
        "api/v1",
        "nodes",
        serde_json::json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
            "spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
    );
    api.put(
        "api/v1",
        "namespaces",
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
    );
    fs::create_dir_all(&plan.work_dir)?;
    let kubeconfig = plan.work_dir.join("kubeconfig");
    fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n",
            api.url()
        ),
    )?;
    let attack: AttackCorpus = load("attack.yaml")?;
    let benign: BenignCorpus = load("benign.yaml")?;
    for runtime_name in &plan.runtimes {
        let mut dockerd;
        let mut containerd;
        let mut runtime: Box<dyn Runtime> = match runtime_name.as_str() {
            "docker" => {
                dockerd = Dockerd::start("corpus").context("cannot start dockerd")?;
                image.import_docker(&dockerd, IMAGE)?;
                Box::new(DockerRuntime {
                    dockerd: &mut dockerd,
                })
            }
            "containerd" => {
                containerd = Containerd::start("corpus").context("cannot start containerd")?;
                containerd.import(
                    &image.oci_archive(IMAGE)?,
                    &crate::image::normalize_reference(IMAGE),
                )?;
                Box::new(ContainerdRuntime::new(&mut containerd))
            }
            other => bail!("unknown runtime {other}"),
        };
        let dir = plan.work_dir.join(runtime_name);
        fs::create_dir_all(&dir)?;
        if let Some(duration) = plan.benign {
            let output = dir.join("benign.jsonl");
            let config = dir.join("benign.yaml");
            fs::write(
                &config,
                format!(
                    "attribution:\n  kubernetes: true\n  node_name: {NODE}\nsensors:\n  watch: containers\ncontain:\n  warmup_s: 0\n  node_name: {NODE}\n  journal_dir: {}\nevidence:\n  on_contain: false\nmetrics:\n  enabled: false\n",
                    dir.join("benign-incidents").display()
                ),
            )?;
            let mut daemon = Daemon::start(
                &plan.detector,
                &config,
                &output,
                &[("KUBECONFIG", kubeconfig.as_os_str())],
            )?;
            let mut tail = OutputTail::new(&output);
            let report = play_benign(
                runtime.as_mut(),
                &mut tail,
                &api,
                &benign,
                duration,
                plan.restarts,
            );
            let (status, log) = daemon.stop();
            let report = report?;
            anyhow::ensure!(status.success(), "daemon: {status}\n{}", log.join("\n"));
            outcome.benign.push(report);
        }
        if plan.attack {
            let output = dir.join("attack.jsonl");
            let config = dir.join("attack.yaml");
            fs::write(
                &config,
                format!(
                    "sensors:\n  watch: containers\ncontain:\n  warmup_s: 0\n  journal_dir: {}\nevidence:\n  on_contain: false\nmetrics:\n  enabled: false\n",
                    dir.join("attack-incidents").display()
                ),
            )?;
            let mut daemon = Daemon::start(&plan.detector, &config, &output, &[])?;
            let mut tail = OutputTail::new(&output);
            let mut results = Vec::new();
            for (n, behaviour) in attack.behaviours.iter().enumerate() {
                if !plan.attacks.is_empty() && !plan.attacks.contains(&behaviour.id) {
                    continue;
                }
                let result = play_attack(
                    runtime.as_mut(),
                    &mut tail,
                    &attack,
                    behaviour,
                    image.rootfs(),
                    n,
                );
                match result {
                    Ok(r) => results.push(r),
                    Err(err) => {
                        let (_, log) = daemon.stop();
                        bail!("{}: {err:#}\n{}", behaviour.id, log.join("\n"));
                    }
                }
            }
            let (status, log) = daemon.stop();
            anyhow::ensure!(status.success(), "daemon: {status}\n{}", log.join("\n"));
            outcome.attacks.extend(results);
        }
    }
    Ok(outcome)
}
