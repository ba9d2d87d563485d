//! The sensors' overhead and throughput benchmark (`cargo xtask bench` runs it as root).
//!
//! 1. Read-only `openat` + `close` loop: nothing attached; the do-nothing programs on the
//!    sensors' tracepoints (the floor); the sensors; the sensors with `watch: containers` seen
//!    from a host process. All are loaded once and switched on and off (attach/detach, no new
//!    load) between stretches of 10,000 iterations of one long-running loop process, in blocks
//!    that visit every mode in a rotating order: each stretch is compared with its neighbours
//!    in the same block, a few hundred milliseconds apart, so the VM's drift between speed
//!    states over seconds cancels out. Medians over the blocks of each mode's time and of its
//!    difference to nothing in the same block. When bpftrace is installed, an equivalent
//!    bpftrace filter as a peer, in rounds of its own (it takes seconds to start).
//! 2. Exec loop (spawns of `/bin/true`): nothing, the floor, the sensors.
//! 3. Write-open flood with repeat suppression off: two processes at once, every open an event,
//!    through the real daemon binary writing JSON lines; events delivered, events lost (by the
//!    daemon's loss records and by counting its output), and the loops' slowdown.
//!
//! 4. Memory of the real daemon binary with the default configuration (its resident set, from
//!    `/proc/<pid>/status`): idle, at the write flood's peak, with 250 pods of 50 processes each,
//!    and after minutes of mixed activity in 20 pods (execs, write-opens, loopback connects).
//!
//! Every workload runs in a cgroup of the benchmark's own; processes it starts are ended by pid.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use detector::{
    config::{SensorsConfig, Watch},
    pipeline::Pipeline,
    sensors::{ProgramSet, Sensors},
};
use tests::{TestCgroup, memory::Rss};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Nothing,
    Floor,
    Sensors,
    /// The sensors with `watch: containers` (the DaemonSet's setting), the loop outside any
    /// container: what a node's own processes (kubelet, the runtime) pay.
    SensorsHost,
    /// The sensors from another build of the eBPF object (`--compare-object`), in the same
    /// blocks: two builds told apart on a noisy machine by their paired differences.
    Compared,
    Bpftrace,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Nothing => "nothing attached",
            Self::Floor => "do-nothing programs (floor)",
            Self::Sensors => "detector sensors",
            Self::SensorsHost => "detector sensors, watch: containers, host process",
            Self::Compared => "detector sensors, the compared build",
            Self::Bpftrace => "bpftrace filter (peer)",
        }
    }

    /// The sensors' configuration in this mode.
    fn config(self) -> SensorsConfig {
        // A program the kernel refused would be measured as costing nothing.
        let mut config = SensorsConfig {
            require_all_programs: true,
            ..SensorsConfig::default()
        };
        if self == Self::SensorsHost {
            config.watch = Watch::Containers;
        }
        config
    }
}

struct Args {
    rounds: usize,
    peer_rounds: usize,
    opens: u64,
    execs: u64,
    flood: u64,
    /// Only the memory part (with its flood).
    memory_only: bool,
    /// Only the read-only open loop (no peer, exec loop, flood or memory).
    open_only: bool,
    pods: usize,
    processes: usize,
    mixed_seconds: u64,
    report: PathBuf,
    /// Another build of the typed eBPF object, measured beside this one in the open loop.
    compare_object: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        rounds: 11,
        peer_rounds: 5,
        opens: 1_000_000,
        execs: 3_000,
        flood: 200_000,
        memory_only: false,
        open_only: false,
        pods: 250,
        processes: 50,
        mixed_seconds: 180,
        report: PathBuf::from("target/bench/report.json"),
        compare_object: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => args.rounds = value()?.parse()?,
            "--peer-rounds" => args.peer_rounds = value()?.parse()?,
            "--opens" => args.opens = value()?.parse()?,
            "--execs" => args.execs = value()?.parse()?,
            "--flood" => args.flood = value()?.parse()?,
            "--memory-only" => args.memory_only = true,
            "--open-only" => args.open_only = true,
            "--pods" => args.pods = value()?.parse()?,
            "--processes" => args.processes = value()?.parse()?,
            "--mixed-seconds" => args.mixed_seconds = value()?.parse()?,
            "--report" => args.report = value()?.into(),
            "--compare-object" => args.compare_object = Some(value()?.into()),
            other => {
                bail!(
                    "unknown argument {other}; known: --rounds --peer-rounds --opens --execs --flood --memory-only --open-only --pods --processes --mixed-seconds --report --compare-object"
                )
            }
        }
    }
    ensure!(
        args.rounds > 0 && args.peer_rounds > 0,
        "--rounds and --peer-rounds must be at least 1"
    );
    Ok(args)
}

/// Something attached for the duration of one measurement.
enum Attached {
    Nothing,
    Programs {
        runtime: tokio::runtime::Runtime,
        pipeline: Option<Pipeline>,
        _floor: Option<Box<Sensors>>,
    },
    Bpftrace(Child),
}

impl Attached {
    fn start(mode: Mode, work: &Path) -> anyhow::Result<Self> {
        let config = mode.config();
        match mode {
            Mode::Nothing => Ok(Self::Nothing),
            Mode::Floor => Ok(Self::Programs {
                runtime: runtime()?,
                pipeline: None,
                _floor: Some(Box::new(Sensors::load(&config, ProgramSet::Noop)?)),
            }),
            Mode::Sensors | Mode::SensorsHost => {
                let runtime = runtime()?;
                let sensors = Sensors::load(&config, ProgramSet::Sensors)?;
                let pipeline = {
                    let _guard = runtime.enter();
                    let (pipeline, mut batches) = Pipeline::spawn(sensors, Duration::from_secs(1))?;
                    // Events of the rest of the machine are drained, as the daemon would.
                    runtime.spawn(async move { while batches.recv().await.is_some() {} });
                    pipeline
                };
                Ok(Self::Programs {
                    runtime,
                    pipeline: Some(pipeline),
                    _floor: None,
                })
            }
            Mode::Bpftrace => start_bpftrace(work).map(Self::Bpftrace),
            Mode::Compared => bail!("the compared build is measured in the open loop only"),
        }
    }

    fn stop(self) {
        match self {
            Self::Nothing => {}
            Self::Programs {
                runtime, pipeline, ..
            } => {
                if let Some(pipeline) = pipeline {
                    runtime.block_on(pipeline.stop());
                }
            }
            Self::Bpftrace(mut child) => {
                // SAFETY: the pid is our own child's.
                unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
                let _ = child.wait();
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

/// The bpftrace equivalent of the sensors' open filter: write intent, or one of two
/// read-sensitive prefixes; prints each hit.
const BPFTRACE_SCRIPT: &str = r#"tracepoint:syscalls:sys_enter_openat
/ (args->flags & 3) != 0 || (args->flags & 0x240) != 0 ||
  strncmp(str(args->filename), "/etc/shadow", 11) == 0 ||
  strncmp(str(args->filename), "/var/run/secrets", 16) == 0 /
{ printf("%d %d %s\n", pid, cgroup, str(args->filename)); }"#;

fn start_bpftrace(work: &Path) -> anyhow::Result<Child> {
    let mut child = Command::new("bpftrace")
        .args(["-e", BPFTRACE_SCRIPT])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn bpftrace")?;
    let stdout = child.stdout.take().context("bpftrace stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // bpftrace prints "Attaching" before it attaches; wait until a write-open is really seen.
    let marker = work.join("bpftrace-marker");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        fs::write(&marker, "x")?;
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            if line.contains("bpftrace-marker") {
                // Keep draining in the background so bpftrace never blocks on its pipe.
                std::thread::spawn(move || while rx.recv().is_ok() {});
                return Ok(child);
            }
        }
    }
    // SAFETY: the pid is our own child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    bail!("bpftrace did not report a write-open within 30 s")
}

fn helper() -> anyhow::Result<PathBuf> {
    sibling("detector-test-helper")
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    ensure!(
        path.exists(),
        "{} not found: build it with `cargo build --release -p tests -p detector`",
        path.display()
    );
    Ok(path)
}

/// Runs a helper workload in the cgroup; returns its own elapsed nanoseconds.
fn spawn_workload(cgroup: &TestCgroup, args: &[&str]) -> anyhow::Result<Child> {
    Ok(cgroup
        .command(helper()?)?
        .args(args)
        .stdout(Stdio::piped())
        .spawn()?)
}

fn finish_workload(child: Child) -> anyhow::Result<f64> {
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "workload failed: {}",
        output.status
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
}

fn run_workload(cgroup: &TestCgroup, args: &[&str]) -> anyhow::Result<f64> {
    finish_workload(spawn_workload(cgroup, args)?)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// Interleaved rounds of one workload over `modes`; median ns per iteration by mode.
fn interleaved(
    modes: &[Mode],
    rounds: usize,
    iterations: u64,
    work: &Path,
    cgroup: &TestCgroup,
    args: &[&str],
) -> anyhow::Result<BTreeMap<Mode, Vec<f64>>> {
    let mut samples: BTreeMap<Mode, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        // Rotate the order so no mode always runs first or last.
        for i in 0..modes.len() {
            let mode = modes[(i + round) % modes.len()];
            let attached = Attached::start(mode, work)?;
            let result = run_workload(cgroup, args);
            attached.stop();
            let per_iteration = result? / iterations as f64;
            eprintln!(
                "  round {round} {:<30} {per_iteration:>9.1} ns",
                mode.name()
            );
            samples.entry(mode).or_default().push(per_iteration);
        }
    }
    Ok(samples)
}

/// The three program sets of the open loop, loaded once, at most one attached at a time.
struct Switchable {
    floor: Sensors,
    sensors: Sensors,
    host: Sensors,
    compared: Option<Sensors>,
    attached: Mode,
    stop_drain: std::sync::Arc<std::sync::atomic::AtomicBool>,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl Switchable {
    fn load(compared: Option<&[u8]>) -> anyhow::Result<Self> {
        let mut floor = Sensors::load(&Mode::Floor.config(), ProgramSet::Noop)?;
        floor.detach()?;
        let mut sensors = Sensors::load(&Mode::Sensors.config(), ProgramSet::Sensors)?;
        sensors.detach()?;
        let mut host = Sensors::load(&Mode::SensorsHost.config(), ProgramSet::Sensors)?;
        host.detach()?;
        let mut compared = match compared {
            Some(object) => {
                let mut compared =
                    Sensors::load_object(&Mode::Sensors.config(), ProgramSet::Sensors, object)?;
                compared.detach()?;
                Some(compared)
            }
            None => None,
        };
        // Events of the rest of the machine are drained, as the daemon would; the loop itself
        // produces none.
        let mut rings = vec![sensors.take_events()?, host.take_events()?];
        if let Some(compared) = &mut compared {
            rings.push(compared.take_events()?);
        }
        let stop_drain = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = stop_drain.clone();
        let drain = std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for ring in &mut rings {
                    while ring.next().is_some() {}
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Ok(Self {
            floor,
            sensors,
            host,
            compared,
            attached: Mode::Nothing,
            stop_drain,
            drain: Some(drain),
        })
    }

    fn programs(&mut self, mode: Mode) -> Option<&mut Sensors> {
        match mode {
            Mode::Floor => Some(&mut self.floor),
            Mode::Sensors => Some(&mut self.sensors),
            Mode::SensorsHost => Some(&mut self.host),
            Mode::Compared => self.compared.as_mut(),
            Mode::Nothing | Mode::Bpftrace => None,
        }
    }

    fn switch(&mut self, mode: Mode) -> anyhow::Result<()> {
        if mode == self.attached {
            return Ok(());
        }
        if let Some(programs) = self.programs(self.attached) {
            programs.detach()?;
        }
        self.attached = Mode::Nothing;
        if let Some(programs) = self.programs(mode) {
            programs.attach()?;
        }
        self.attached = mode;
        Ok(())
    }
}

impl Drop for Switchable {
    fn drop(&mut self) {
        self.stop_drain
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
    }
}

/// A long-running `open-server` helper: each request runs a stretch of the loop.
struct OpenServer {
    child: Child,
    requests: std::process::ChildStdin,
    answers: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl OpenServer {
    fn start(cgroup: &TestCgroup, path: &str) -> anyhow::Result<Self> {
        let mut child = cgroup
            .command(helper()?)?
            .args(["open-server", path])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let requests = child.stdin.take().context("open-server stdin")?;
        let answers = BufReader::new(child.stdout.take().context("open-server stdout")?).lines();
        Ok(Self {
            child,
            requests,
            answers,
        })
    }

    /// Runs `n` iterations; ns per iteration.
    fn run(&mut self, n: u64) -> anyhow::Result<f64> {
        use std::io::Write as _;
        writeln!(self.requests, "{n}")?;
        let line = self
            .answers
            .next()
            .context("open-server ended")?
            .context("read open-server")?;
        Ok(line.trim().parse::<f64>()? / n as f64)
    }
}

impl Drop for OpenServer {
    fn drop(&mut self) {
        // SAFETY: the pid is our own child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Iterations per stretch of the switched open loop: ~40 ms here.
const STRETCH: u64 = 10_000;

/// One mode's stretches and their differences to the stretch without anything in the same
/// block (ns per iteration).
#[derive(Default)]
struct Stretches {
    ns: Vec<f64>,
    added: Vec<f64>,
    ratio: Vec<f64>,
}

/// The open loop over `modes` (the first is `Nothing`), programs switched between stretches.
fn switched_open_loop(
    modes: &[Mode],
    iterations: u64,
    server: &mut OpenServer,
    compared: Option<&[u8]>,
) -> anyhow::Result<BTreeMap<Mode, Stretches>> {
    let mut programs = Switchable::load(compared)?;
    let blocks = iterations.div_ceil(STRETCH) as usize;
    // Warm-up: the first stretches of a new process and of each newly attached set are slower.
    for &mode in modes {
        programs.switch(mode)?;
        server.run(STRETCH)?;
    }
    let mut stretches: BTreeMap<Mode, Stretches> = BTreeMap::new();
    for block in 0..blocks {
        let mut ns = BTreeMap::new();
        for i in 0..modes.len() {
            let mode = modes[(i + block) % modes.len()];
            programs.switch(mode)?;
            ns.insert(mode, server.run(STRETCH)?);
        }
        let nothing = ns[&Mode::Nothing];
        for (mode, ns) in ns {
            let entry = stretches.entry(mode).or_default();
            entry.ns.push(ns);
            entry.added.push(ns - nothing);
            entry.ratio.push(ns / nothing);
        }
        if block % 20 == 19 {
            let summary: Vec<String> = modes
                .iter()
                .map(|m| format!("{} {:.1}", m.name(), median(&stretches[m].ns)))
                .collect();
            eprintln!("  {} blocks: {}", block + 1, summary.join(", "));
        }
    }
    programs.switch(Mode::Nothing)?;
    Ok(stretches)
}

/// The bpftrace peer: rounds of stretches without, then with bpftrace (it takes seconds to
/// start, so it cannot be switched per stretch).
fn bpftrace_open_loop(
    rounds: usize,
    iterations: u64,
    work: &Path,
    server: &mut OpenServer,
) -> anyhow::Result<BTreeMap<Mode, Stretches>> {
    let per_round = (iterations.div_ceil(STRETCH) as usize).div_ceil(rounds);
    let mut stretches: BTreeMap<Mode, Stretches> = BTreeMap::new();
    for round in 0..rounds {
        let mut without = Vec::new();
        for _ in 0..per_round {
            without.push(server.run(STRETCH)?);
        }
        let peer = Attached::start(Mode::Bpftrace, work)?;
        let with: anyhow::Result<Vec<f64>> = (0..per_round).map(|_| server.run(STRETCH)).collect();
        peer.stop();
        let with = with?;
        let base = median(&without);
        for (mode, values) in [(Mode::Nothing, &without), (Mode::Bpftrace, &with)] {
            let entry = stretches.entry(mode).or_default();
            for &ns in values {
                entry.ns.push(ns);
                entry.added.push(ns - base);
                entry.ratio.push(ns / base);
            }
        }
        eprintln!(
            "  round {round}: nothing {base:.1}, bpftrace {:.1}",
            median(&with)
        );
    }
    Ok(stretches)
}

/// The 25th and 75th percentiles.
fn quartiles(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.75))
}

struct Flood {
    expected: u64,
    delivered: u64,
    lost_by_counters: u64,
    loop_ns_without: f64,
    loop_ns_with: f64,
    seconds_to_drain: f64,
    /// The daemon's memory when the flood was written (its peak: `peak_kib`).
    rss: Rss,
}

fn write_flood(work: &Path, cgroup: &TestCgroup, n: u64) -> anyhow::Result<Flood> {
    let n_arg = n.to_string();
    let files = [work.join("flood-a"), work.join("flood-b")];
    let paths: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let two_loops = || -> anyhow::Result<f64> {
        let a = spawn_workload(cgroup, &["write-loop", &paths[0], &n_arg])?;
        let b = spawn_workload(cgroup, &["write-loop", &paths[1], &n_arg])?;
        Ok(finish_workload(a)?.max(finish_workload(b)?))
    };
    let loop_ns_without = two_loops()?;

    let output = work.join("flood.jsonl");
    let mut daemon = tests::daemon::Daemon::run(
        &sibling("detector")?,
        &[
            "--write-dedup-window-ms".as_ref(),
            "0".as_ref(),
            "--output".as_ref(),
            output.as_os_str(),
        ],
        &output,
        &[],
    )?;
    let start = Instant::now();
    let loop_ns_with = two_loops()?;
    // Every event written (the output stopped growing): the peak is behind.
    settle(&output, Duration::from_secs(60));
    let rss = Rss::of(daemon.pid())?;
    let (status, _) = daemon.stop();
    let seconds_to_drain = start.elapsed().as_secs_f64();
    ensure!(status.success(), "daemon exited with {status}");

    let mut delivered = 0;
    let mut lost_by_counters = 0;
    for line in BufReader::new(fs::File::open(&output)?).lines() {
        let line = line?;
        let value: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("daemon wrote a line that is not JSON: {line}"))?;
        match value["kind"].as_str() {
            Some("file") if paths.iter().any(|p| value["path"] == p.as_str()) => delivered += 1,
            Some("loss") => lost_by_counters += value["count"].as_u64().unwrap_or(0),
            _ => {}
        }
    }
    fs::remove_file(&output)?;
    for file in &files {
        fs::remove_file(file)?;
    }
    Ok(Flood {
        expected: 2 * n,
        delivered,
        lost_by_counters,
        loop_ns_without,
        loop_ns_with,
        seconds_to_drain,
        rss,
    })
}

/// Waits (`limit` at most) until `path` has not grown for a second.
fn settle(path: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    let size = || fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut last = size();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        let now = size();
        if now == last {
            return;
        }
        last = now;
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    ensure!(
        tests::privileged("detector-bench"),
        "the benchmark loads eBPF programs: run it as root"
    );
    let work = std::env::temp_dir().join(format!("detector-bench-{}", std::process::id()));
    fs::create_dir_all(&work)?;
    let result = run(&args, &work);
    let _ = fs::remove_dir_all(&work);
    result
}

/// The write-open flood, then the memory cases.
fn flood_and_memory(
    args: &Args,
    work: &Path,
    cgroup: &TestCgroup,
) -> anyhow::Result<(Flood, Memory)> {
    eprintln!("write-open flood: 2 processes x {}", args.flood);
    let flood = write_flood(work, cgroup, args.flood)?;
    eprintln!(
        "memory: idle, {} pods x {}, mixed activity",
        args.pods, args.processes
    );
    Ok((flood, memory(args, work)?))
}

/// The read-only open loop's results: per-mode stretches, and `sys_exit`'s own run time.
struct OpenResults {
    modes: Vec<Mode>,
    samples: BTreeMap<Mode, Stretches>,
    in_kernel: InKernel,
}

/// The read-only open loop in every mode (and bpftrace's when installed), then `sys_exit`'s
/// own run time over the same loop.
fn measure_open(args: &Args, work: &Path, cgroup: &TestCgroup) -> anyhow::Result<OpenResults> {
    let ordinary = work.join("ordinary");
    fs::write(&ordinary, "read me")?;
    let ordinary = ordinary.display().to_string();
    let has_bpftrace = Command::new("bpftrace")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut modes = vec![Mode::Nothing, Mode::Floor, Mode::Sensors, Mode::SensorsHost];
    let compared = match &args.compare_object {
        Some(path) => {
            modes.push(Mode::Compared);
            Some(fs::read(path).with_context(|| format!("read {}", path.display()))?)
        }
        None => None,
    };
    eprintln!(
        "read-only openat+close x {} per mode, switched every {STRETCH}",
        args.opens
    );
    let mut server = OpenServer::start(cgroup, &ordinary)?;
    let mut samples = switched_open_loop(&modes, args.opens, &mut server, compared.as_deref())?;
    if has_bpftrace && !args.open_only {
        ensure_tracefs()?;
        eprintln!(
            "read-only openat+close, bpftrace peer, {} rounds",
            args.peer_rounds
        );
        let peer = bpftrace_open_loop(args.peer_rounds, args.opens, work, &mut server)?;
        samples.extend(peer.into_iter().filter(|(mode, _)| *mode == Mode::Bpftrace));
        modes.push(Mode::Bpftrace);
    } else if !has_bpftrace {
        eprintln!("bpftrace not installed: peer comparison left out");
    }
    drop(server);
    eprintln!("in-kernel run time per call of sys_exit (kernel run-time statistics)");
    let in_kernel = in_kernel_cost(cgroup, &["open-loop", &ordinary, &args.opens.to_string()])?;
    Ok(OpenResults {
        modes,
        samples,
        in_kernel,
    })
}

/// Prints the open loop's tables; its part of the report.
fn report_open(open: &OpenResults, args: &Args) -> anyhow::Result<serde_json::Value> {
    let stretches = |mode: Mode| open.samples.get(&mode).context("mode not measured");
    let floor_added = median(&stretches(Mode::Floor)?.added);
    let sensors_added = median(&stretches(Mode::Sensors)?.added);
    let host_added = median(&stretches(Mode::SensorsHost)?.added);
    let added_ratio = sensors_added / floor_added;
    let host_added_ratio = host_added / floor_added;
    println!(
        "\n## read-only openat+close, {} per mode in stretches of {STRETCH}, medians over the stretches",
        args.opens
    );
    println!(
        "| attached | ns per iteration | ratio to nothing (same block) | added ns (same block) | added ns, quartiles |"
    );
    println!("|---|---|---|---|---|");
    for mode in &open.modes {
        let stretches = stretches(*mode)?;
        let (q1, q3) = quartiles(&stretches.added);
        println!(
            "| {} | {:.1} | {:.3} | {:.1} | {q1:.1} .. {q3:.1} |",
            mode.name(),
            median(&stretches.ns),
            median(&stretches.ratio),
            median(&stretches.added),
        );
    }
    if open.modes.contains(&Mode::Bpftrace) {
        println!("(bpftrace: compared with the stretches without it in its own rounds)");
    }
    println!(
        "sensors' added cost per call: {sensors_added:.1} ns = {added_ratio:.2}x the floor's {floor_added:.1} ns"
    );
    println!(
        "with watch: containers, a host process: {host_added:.1} ns = {host_added_ratio:.2}x the floor's"
    );
    let compared = open.samples.get(&Mode::Compared).map(|compared| {
        // Paired: each block's two stretches ran a few hundred milliseconds apart.
        let sensors = &open.samples[&Mode::Sensors].added;
        let differences: Vec<f64> = sensors
            .iter()
            .zip(&compared.added)
            .map(|(this, other)| this - other)
            .collect();
        let compared_added = median(&compared.added);
        let (q1, q3) = quartiles(&differences);
        let difference = median(&differences);
        println!(
            "the compared build: {compared_added:.1} ns = {:.2}x the floor's; this build minus the compared one, per block: median {difference:.1} ns (quartiles {q1:.1} .. {q3:.1})",
            compared_added / floor_added
        );
        serde_json::json!({
            "added_over_floor_added": compared_added / floor_added,
            "this_minus_compared_median_ns": difference,
            "this_minus_compared_quartiles_ns": [q1, q3],
        })
    });
    println!(
        "\n## sys_exit's own run time per call during the open loop (kernel run-time statistics; they add their own clock reads to each)"
    );
    println!("| program | runs | ns per run |");
    println!("|---|---|---|");
    for (name, (runs, ns)) in &open.in_kernel.run_time {
        println!("| {name} | {runs} | {ns:.1} |");
    }
    println!("\n## instructions verified per program (the verifier's limit: 1,000,000)");
    println!("| program | instructions |");
    println!("|---|---|");
    for (name, count) in &open.in_kernel.verified {
        println!("| {name} | {count} |");
    }
    let by_mode = |f: fn(&Stretches) -> &Vec<f64>| {
        open.modes
            .iter()
            .filter_map(|m| Some((m.name(), median(f(open.samples.get(m)?)))))
            .collect::<BTreeMap<_, _>>()
    };
    Ok(serde_json::json!({
        "open_loop": {
            "iterations_per_mode": args.opens,
            "stretch": STRETCH,
            "median_ns": by_mode(|s| &s.ns),
            "median_added_ns": by_mode(|s| &s.added),
            "sensors_ratio": median(&stretches(Mode::Sensors)?.ratio),
            "floor_ratio": median(&stretches(Mode::Floor)?.ratio),
            "compared_build": compared,
            "sensors_added_over_floor_added": added_ratio,
            "host_process_ratio": median(&stretches(Mode::SensorsHost)?.ratio),
            "host_process_added_over_floor_added": host_added_ratio,
        },
        "verified_instructions": open.in_kernel.verified,
        "sys_exit_ns_per_run": open
            .in_kernel
            .run_time
            .iter()
            .map(|(name, (_, ns))| (*name, *ns))
            .collect::<BTreeMap<_, _>>(),
    }))
}

fn run(args: &Args, work: &Path) -> anyhow::Result<()> {
    let cgroup = TestCgroup::create(&format!("detector-bench/{}", std::process::id()))?;
    if args.memory_only {
        let (flood, memory) = flood_and_memory(args, work, &cgroup)?;
        let report = serde_json::json!({ "memory": report_memory(&memory, &flood, args) });
        return write_report(args, &report);
    }
    let open = measure_open(args, work, &cgroup)?;
    let mut report = report_open(&open, args)?;
    if args.open_only {
        return write_report(args, &report);
    }
    eprintln!("exec loop x {} ({} rounds)", args.execs, args.rounds);
    let execs = args.execs.to_string();
    let exec_samples = interleaved(
        &[Mode::Nothing, Mode::Floor, Mode::Sensors],
        args.rounds,
        args.execs,
        work,
        &cgroup,
        &["exec-loop", &execs],
    )?;
    let (flood, memory) = flood_and_memory(args, work, &cgroup)?;
    let med = |samples: &BTreeMap<Mode, Vec<f64>>, mode| samples.get(&mode).map(|v| median(v));
    let exec_base = med(&exec_samples, Mode::Nothing).context("no exec baseline")?;
    println!(
        "\n## exec loop, {} spawns of /bin/true per round, medians",
        args.execs
    );
    println!("| attached | us per spawn | ratio to nothing |");
    println!("|---|---|---|");
    for mode in [Mode::Nothing, Mode::Floor, Mode::Sensors] {
        let m = med(&exec_samples, mode).unwrap_or(f64::NAN);
        println!(
            "| {} | {:.1} | {:.3} |",
            mode.name(),
            m / 1000.0,
            m / exec_base
        );
    }

    let lost_by_count = flood.expected.saturating_sub(flood.delivered);
    println!(
        "\n## write-open flood, 2 processes x {}, repeat suppression off",
        args.flood
    );
    println!(
        "events expected {}, delivered {}, missing from output {lost_by_count}, lost by the daemon's counters {}",
        flood.expected, flood.delivered, flood.lost_by_counters
    );
    println!(
        "loops: {:.2} s without the daemon, {:.2} s with it (slowdown {:.2}x); all events written {:.2} s after the loops started ({:.0} events/s)",
        flood.loop_ns_without / 1e9,
        flood.loop_ns_with / 1e9,
        flood.loop_ns_with / flood.loop_ns_without,
        flood.seconds_to_drain,
        flood.delivered as f64 / flood.seconds_to_drain
    );

    let exec_medians: BTreeMap<_, _> = [Mode::Nothing, Mode::Floor, Mode::Sensors]
        .iter()
        .map(|m| (m.name(), med(&exec_samples, *m)))
        .collect();
    report["exec_loop"] = serde_json::json!({
        "spawns": args.execs,
        "median_ns": exec_medians,
    });
    report["write_flood"] = serde_json::json!({
        "expected": flood.expected,
        "delivered": flood.delivered,
        "lost_by_counters": flood.lost_by_counters,
        "slowdown": flood.loop_ns_with / flood.loop_ns_without,
        "events_per_second": flood.delivered as f64 / flood.seconds_to_drain,
    });
    report["memory"] = report_memory(&memory, &flood, args);
    write_report(args, &report)
}

fn write_report(args: &Args, report: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(dir) = args.report.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&args.report, serde_json::to_string_pretty(report)?)?;
    println!("\nreport: {}", args.report.display());
    Ok(())
}

/// What the kernel says of the programs: the `sys_exit` programs' runs and run time per run
/// (floor, then sensors), and the verifier's instruction count of each sensor program.
#[derive(Default)]
struct InKernel {
    run_time: BTreeMap<&'static str, (u64, f64)>,
    verified: BTreeMap<&'static str, u32>,
}

/// Where the kernel's BPF run-time statistics are switched on and off.
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The `sys_exit` programs' own run time per call (floor, then sensors) over one run of
/// `workload`, from the kernel's run-time statistics, switched on for the measurement only,
/// and the sensor programs' verified instructions. Runs count every syscall on the machine
/// meanwhile.
fn in_kernel_cost(cgroup: &TestCgroup, workload: &[&str]) -> anyhow::Result<InKernel> {
    let before = fs::read_to_string(BPF_STATS).with_context(|| format!("read {BPF_STATS}"))?;
    fs::write(BPF_STATS, "1").with_context(|| format!("enable {BPF_STATS}"))?;
    let measure = || -> anyhow::Result<InKernel> {
        let config = SensorsConfig::default();
        let mut in_kernel = InKernel::default();
        for set in [ProgramSet::Noop, ProgramSet::Sensors] {
            let sensors = Sensors::load(&config, set)?;
            run_workload(cgroup, workload)?;
            for stats in sensors.program_stats() {
                if stats.name.ends_with("sys_exit") && stats.runs > 0 {
                    let ns = stats.run_time.as_nanos() as f64 / stats.runs as f64;
                    in_kernel.run_time.insert(stats.name, (stats.runs, ns));
                }
                if set == ProgramSet::Sensors
                    && let Some(count) = stats.verified_instructions
                {
                    in_kernel.verified.insert(stats.name, count);
                }
            }
        }
        Ok(in_kernel)
    };
    let result = measure();
    fs::write(BPF_STATS, before.trim()).with_context(|| format!("restore {BPF_STATS}"))?;
    result
}

/// bpftrace's tracepoints need tracefs; a fresh machine does not mount it.
fn ensure_tracefs() -> anyhow::Result<()> {
    if Path::new("/sys/kernel/tracing/events").exists()
        || Path::new("/sys/kernel/debug/tracing/events").exists()
    {
        return Ok(());
    }
    eprintln!("mounting tracefs at /sys/kernel/tracing for bpftrace");
    let status = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status()?;
    ensure!(status.success(), "mount tracefs: {status}");
    Ok(())
}

/// The daemon's memory in each case of the memory benchmark.
struct Memory {
    idle: Rss,
    pods: Rss,
    pod_processes: usize,
    mixed: Rss,
    mixed_seconds: f64,
    mixed_lines: u64,
}

/// A pod's container cgroup in the kubelet's systemd layout below the benchmark's cgroup.
fn pod_cgroup(i: usize) -> anyhow::Result<TestCgroup> {
    let uid = format!("{i:08x}_0000_4000_8000_{i:012x}");
    let relative = format!(
        "detector-bench/{}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/cri-containerd-{:064x}.scope",
        std::process::id(),
        i + 1
    );
    Ok(TestCgroup::create(&relative)?)
}

/// Ends the children the benchmark started, by pid.
fn end_all(children: &mut Vec<Child>) {
    for child in children.iter_mut() {
        let _ = child.kill();
    }
    for mut child in children.drain(..) {
        let _ = child.wait();
    }
}

/// The real daemon with the default configuration (its output to a file): resident memory
/// idle, with `pods` pods of `processes` processes each, and after `mixed_seconds` of mixed
/// activity in 20 pods.
fn memory(args: &Args, work: &Path) -> anyhow::Result<Memory> {
    let output = work.join("memory.jsonl");
    let mut daemon = tests::daemon::Daemon::run(
        &sibling("detector")?,
        &["--output".as_ref(), output.as_os_str()],
        &output,
        &[],
    )?;
    std::thread::sleep(Duration::from_secs(10));
    let idle = Rss::of(daemon.pid())?;
    eprintln!("memory: idle {idle:?}");
    eprintln!("memory: idle {:.1} MiB", idle.rss_mib());

    // Pods with their processes, all sleeping: what the daemon keeps per pod and process.
    let mut pods = Vec::with_capacity(args.pods);
    let mut children = Vec::with_capacity(args.pods * args.processes);
    let started = (|| -> anyhow::Result<()> {
        for i in 0..args.pods {
            let pod = pod_cgroup(i)?;
            for _ in 0..args.processes {
                children.push(
                    pod.command("/bin/sleep")?
                        .arg("900")
                        .stdout(Stdio::null())
                        .spawn()?,
                );
            }
            pods.push(pod);
        }
        Ok(())
    })();
    let pod_processes = children.len();
    if started.is_ok() {
        settle(&output, Duration::from_secs(60));
        std::thread::sleep(Duration::from_secs(5));
    }
    let with_pods = Rss::of(daemon.pid());
    end_all(&mut children);
    drop(pods);
    started?;
    let with_pods = with_pods?;
    eprintln!(
        "memory: {} pods x {} processes {:.1} MiB",
        args.pods,
        args.processes,
        with_pods.rss_mib()
    );

    // Mixed activity: in each of 20 pods a shell exec-ing a tool, write-opening files and
    // connecting to a loopback listener, for `mixed_seconds`.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    let scratch = work.join("mixed");
    fs::create_dir_all(&scratch)?;
    let script = format!(
        "i=0; while [ $SECONDS -lt {secs} ]; do cat /etc/hostname > /dev/null; \
         echo x > {dir}/f-$$-$((i % 64)); (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; \
         i=$((i + 1)); done",
        secs = args.mixed_seconds,
        dir = scratch.display(),
    );
    let lines_before = fs::read_to_string(&output).map(|t| t.lines().count() as u64)?;
    let mixed_started = Instant::now();
    let mut pods = Vec::new();
    let mut children = Vec::new();
    for i in 0..20 {
        let pod = pod_cgroup(10_000 + i)?;
        children.push(
            pod.command("/bin/bash")?
                .args(["-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        pods.push(pod);
    }
    for child in &mut children {
        child.wait()?;
    }
    let mixed_seconds = mixed_started.elapsed().as_secs_f64();
    let mixed = Rss::of(daemon.pid())?;
    children.clear();
    drop(pods);
    let stopping = Instant::now();
    let (status, log) = daemon.stop();
    ensure!(
        status.success(),
        "daemon exited with {status} {:.1?} after SIGTERM; its log's last lines:\n{}",
        stopping.elapsed(),
        log[log.len().saturating_sub(40)..].join("\n")
    );
    let mixed_lines = fs::read_to_string(&output).map(|t| t.lines().count() as u64)? - lines_before;
    let _ = fs::remove_file(&output);
    let _ = fs::remove_dir_all(&scratch);
    eprintln!(
        "memory: after {mixed_seconds:.0} s of mixed activity {:.1} MiB (peak {:.1} MiB)",
        mixed.rss_mib(),
        mixed.peak_mib()
    );
    Ok(Memory {
        idle,
        pods: with_pods,
        pod_processes,
        mixed,
        mixed_seconds,
        mixed_lines,
    })
}

/// The memory benchmark's table and report entry.
fn report_memory(memory: &Memory, flood: &Flood, args: &Args) -> serde_json::Value {
    println!(
        "\n## memory of the daemon (default configuration; resident set from /proc/<pid>/status)"
    );
    println!(
        "| case | resident MiB | peak MiB | anonymous MiB | file MiB | shared (ring buffer) MiB |"
    );
    println!("|---|---|---|---|---|---|");
    let mib = |kib: u64| kib as f64 / 1024.0;
    let cases = [
        ("idle, 10 s after start".to_owned(), memory.idle),
        (
            format!(
                "write-open flood, 2 x {} (repeat suppression off)",
                args.flood
            ),
            flood.rss,
        ),
        (
            format!(
                "{} pods x {} processes ({} processes)",
                args.pods, args.processes, memory.pod_processes
            ),
            memory.pods,
        ),
        (
            format!(
                "after {:.0} s of mixed activity in 20 pods ({:.0} lines/s)",
                memory.mixed_seconds,
                memory.mixed_lines as f64 / memory.mixed_seconds
            ),
            memory.mixed,
        ),
    ];
    println!(
        "(the flood: {} of {} events delivered, {} lost by the daemon's counters)",
        flood.delivered, flood.expected, flood.lost_by_counters
    );
    for (case, rss) in &cases {
        println!(
            "| {case} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            mib(rss.rss_kib),
            mib(rss.peak_kib),
            mib(rss.anon_kib),
            mib(rss.file_kib),
            mib(rss.shmem_kib)
        );
    }
    serde_json::json!({
        "idle": memory.idle,
        "flood": flood.rss,
        "pods": memory.pods,
        "pod_processes": memory.pod_processes,
        "mixed": memory.mixed,
        "mixed_seconds": memory.mixed_seconds,
        "mixed_lines": memory.mixed_lines,
    })
}
