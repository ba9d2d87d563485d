//! The sensors' overhead and throughput benchmark (`cargo xtask bench` runs it as root).
//!
//! 1. Read-only `openat` + `close` loop, in interleaved rounds (each timed in chunks of 1,000
//!    iterations, its median chunk kept), medians of the rounds: nothing attached; the
//!    do-nothing programs on the sensors' tracepoints (the floor); the sensors; and, when
//!    bpftrace is installed, an equivalent bpftrace filter as a peer.
//! 2. Exec loop (spawns of `/bin/true`): nothing, the floor, the sensors.
//! 3. Write-open flood with repeat suppression off: two processes at once, every open an event,
//!    through the real daemon binary writing JSON lines; events delivered, events lost (by the
//!    daemon's loss records and by counting its output), and the loops' slowdown.
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
use tests::TestCgroup;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Nothing,
    Floor,
    Sensors,
    /// The sensors with `watch: containers` (the DaemonSet's setting), the loop outside any
    /// container: what a node's own processes (kubelet, the runtime) pay.
    SensorsHost,
    Bpftrace,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Nothing => "nothing attached",
            Self::Floor => "do-nothing programs (floor)",
            Self::Sensors => "detector sensors",
            Self::SensorsHost => "detector sensors, watch: containers, host process",
            Self::Bpftrace => "bpftrace filter (peer)",
        }
    }
}

struct Args {
    rounds: usize,
    opens: u64,
    execs: u64,
    flood: u64,
    report: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        rounds: 11,
        opens: 1_000_000,
        execs: 3_000,
        flood: 200_000,
        report: PathBuf::from("target/bench/report.json"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => args.rounds = value()?.parse()?,
            "--opens" => args.opens = value()?.parse()?,
            "--execs" => args.execs = value()?.parse()?,
            "--flood" => args.flood = value()?.parse()?,
            "--report" => args.report = value()?.into(),
            other => {
                bail!("unknown argument {other}; known: --rounds --opens --execs --flood --report")
            }
        }
    }
    ensure!(args.rounds > 0, "--rounds must be at least 1");
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
        let mut config = SensorsConfig::default();
        if mode == Mode::SensorsHost {
            config.watch = Watch::Containers;
        }
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

struct Flood {
    expected: u64,
    delivered: u64,
    lost_by_counters: u64,
    loop_ns_without: f64,
    loop_ns_with: f64,
    seconds_to_drain: f64,
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
    let mut daemon = Command::new(sibling("detector")?)
        .args(["run", "--write-dedup-window-ms", "0", "--output"])
        .arg(&output)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn the detector daemon")?;
    let stderr = daemon.stderr.take().context("daemon stderr")?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let log = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(" ready") {
                let _ = ready_tx.send(());
            }
            lines.push(line);
        }
        lines
    });
    if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        // SAFETY: the pid is our own child's.
        unsafe { libc::kill(daemon.id() as i32, libc::SIGKILL) };
        let _ = daemon.wait();
        bail!(
            "daemon not ready: {}",
            log.join().unwrap_or_default().join("\n")
        );
    }
    let start = Instant::now();
    let loop_ns_with = two_loops()?;
    // SAFETY: the pid is our own child's.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait()?;
    let seconds_to_drain = start.elapsed().as_secs_f64();
    let _ = log.join();
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
    })
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

fn run(args: &Args, work: &Path) -> anyhow::Result<()> {
    let cgroup = TestCgroup::create(&format!("detector-bench/{}", std::process::id()))?;
    let ordinary = work.join("ordinary");
    fs::write(&ordinary, "read me")?;
    let ordinary = ordinary.display().to_string();
    let has_bpftrace = Command::new("bpftrace")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut modes = vec![Mode::Nothing, Mode::Floor, Mode::Sensors, Mode::SensorsHost];
    if has_bpftrace {
        ensure_tracefs()?;
        modes.push(Mode::Bpftrace);
    } else {
        eprintln!("bpftrace not installed: peer comparison left out");
    }

    eprintln!(
        "read-only openat+close x {} ({} rounds)",
        args.opens, args.rounds
    );
    let opens = args.opens.to_string();
    let open_samples = interleaved(
        &modes,
        args.rounds,
        args.opens,
        work,
        &cgroup,
        // Timed in chunks, the median chunk per round: a whole loop's time varies by 10% from
        // run to run on a shared VM, more than the hooks add.
        &["open-chunks", &ordinary, &opens],
    )?;
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
    eprintln!("in-kernel run time per call of sys_exit (kernel run-time statistics)");
    let in_kernel = in_kernel_cost(&cgroup, &["open-loop", &ordinary, &opens])?;
    eprintln!("write-open flood: 2 processes x {}", args.flood);
    let flood = write_flood(work, &cgroup, args.flood)?;

    let med = |samples: &BTreeMap<Mode, Vec<f64>>, mode| samples.get(&mode).map(|v| median(v));
    let base = med(&open_samples, Mode::Nothing).context("no baseline")?;
    let floor = med(&open_samples, Mode::Floor).context("no floor")?;
    let sensors = med(&open_samples, Mode::Sensors).context("no sensors")?;
    let added_ratio = (sensors - base) / (floor - base);
    println!(
        "\n## read-only openat+close, {} per round, {} rounds, medians",
        args.opens, args.rounds
    );
    println!("| attached | ns per iteration | ratio to nothing |");
    println!("|---|---|---|");
    for mode in &modes {
        let m = med(&open_samples, *mode).unwrap_or(f64::NAN);
        println!("| {} | {m:.1} | {:.3} |", mode.name(), m / base);
    }
    println!(
        "sensors' added cost per call: {:.1} ns = {added_ratio:.2}x the floor's {:.1} ns",
        sensors - base,
        floor - base
    );
    let host = med(&open_samples, Mode::SensorsHost).context("no host-process sensors")?;
    let host_added_ratio = (host - base) / (floor - base);
    println!(
        "with watch: containers, a host process: {:.1} ns = {host_added_ratio:.2}x the floor's",
        host - base
    );

    println!(
        "\n## sys_exit's own run time per call during the open loop (kernel run-time statistics; they add their own clock reads to each)"
    );
    println!("| program | runs | ns per run |");
    println!("|---|---|---|");
    for (name, (runs, ns)) in &in_kernel {
        println!("| {name} | {runs} | {ns:.1} |");
    }

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
    let open_medians: BTreeMap<_, _> = modes
        .iter()
        .map(|m| (m.name(), med(&open_samples, *m)))
        .collect();
    let report = serde_json::json!({
        "open_loop": {
            "iterations": args.opens,
            "rounds": args.rounds,
            "median_ns": open_medians,
            "sensors_ratio": sensors / base,
            "floor_ratio": floor / base,
            "sensors_added_over_floor_added": added_ratio,
            "host_process_ratio": host / base,
            "host_process_added_over_floor_added": host_added_ratio,
        },
        "sys_exit_ns_per_run": in_kernel
            .iter()
            .map(|(name, (_, ns))| (*name, *ns))
            .collect::<BTreeMap<_, _>>(),
        "exec_loop": {
            "spawns": args.execs,
            "median_ns": exec_medians,
        },
        "write_flood": {
            "expected": flood.expected,
            "delivered": flood.delivered,
            "lost_by_counters": flood.lost_by_counters,
            "slowdown": flood.loop_ns_with / flood.loop_ns_without,
            "events_per_second": flood.delivered as f64 / flood.seconds_to_drain,
        },
    });
    if let Some(dir) = args.report.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&args.report, serde_json::to_string_pretty(&report)?)?;
    println!("\nreport: {}", args.report.display());
    Ok(())
}

/// Where the kernel's BPF run-time statistics are switched on and off.
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// The `sys_exit` programs' own run time per call (floor, then sensors) over one run of
/// `workload`, from the kernel's run-time statistics, switched on for the measurement only:
/// (runs, ns per run) by program. Runs count every syscall on the machine meanwhile.
fn in_kernel_cost(
    cgroup: &TestCgroup,
    workload: &[&str],
) -> anyhow::Result<BTreeMap<&'static str, (u64, f64)>> {
    let before = fs::read_to_string(BPF_STATS).with_context(|| format!("read {BPF_STATS}"))?;
    fs::write(BPF_STATS, "1").with_context(|| format!("enable {BPF_STATS}"))?;
    let measure = || -> anyhow::Result<BTreeMap<&'static str, (u64, f64)>> {
        let config = SensorsConfig::default();
        let mut costs = BTreeMap::new();
        for set in [ProgramSet::Noop, ProgramSet::Sensors] {
            let sensors = Sensors::load(&config, set)?;
            run_workload(cgroup, workload)?;
            for stats in sensors.program_stats() {
                if stats.name.ends_with("sys_exit") && stats.runs > 0 {
                    let ns = stats.run_time.as_nanos() as f64 / stats.runs as f64;
                    costs.insert(stats.name, (stats.runs, ns));
                }
            }
        }
        Ok(costs)
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
