//! Test support for the detector.
//!
//! - [`privileged`]: whether this run may load eBPF programs; under `CI=true` a missing
//!   privilege is a failure, elsewhere the test says why it skips.
//! - [`TestCgroup`]: a cgroup2 directory of the test's own (or a v1 one, for the v1 freezer), to
//!   run real child processes in and to tell their events apart from the rest of the machine.
//!   Removed on drop, failure or not.
//! - [`docker`]: a private, real dockerd for evidence-capture tests, cleaned up on drop.
//! - [`containerd`]: a private, real containerd (ctr, kubepods-style cgroups), cleaned up on drop.
//! - [`cri`]: pods and containers run through the Kubernetes CRI API of that containerd (its
//!   CRI plugin on), as a kubelet runs them; removed on drop.
//! - [`image`]: a realistic Debian image (debootstrap, cached) for Docker and containerd.
//! - [`corpus`]: the attack and benign corpora (`tests/corpus/`) played in real containers.
//! - [`daemon`]: the real `detector run` binary, started, waited for and stopped.
//! - [`host`]: stopping a child the test started, removing a directory with mounts below.
//! - [`kernels`]: the kernel matrix: Debian's kernels booted under qemu, each running
//!   `detector-kernel-check` against the real sensors in its guest, and this machine's own.
//! - [`overlay`]: a real overlay mount laid out like a container's root, unmounted on drop.
//! - [`s3`]: a real S3-compatible server (moto) on loopback, stopped on drop.
//! - [`uring`]: opening a file through an io_uring ring (no `openat` system call).
//! - [`Collector`]: the real sensors and pipeline, running in the test process, with helpers to
//!   wait for events.
//! - [`apiserver`]: a small stateful Kubernetes API server over real HTTP on loopback, for
//!   testing kube-rs code without a cluster.

use std::{
    fs,
    io::{self, Write as _},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use detector::{
    cgroup::{cgroup_id, cgroup2_mount},
    config::{ProgramVariant, SensorsConfig},
    event::Event,
    pipeline::Pipeline,
    quarantine::KernelQuarantine,
    sensors::{ProgramSet, ProgramStatus, Sensors},
};
use tokio::sync::mpsc;

/// The target directory: `CARGO_TARGET_DIR`, else the workspace's `target/` (not the working
/// directory's: tests and benchmarks run in this crate's directory).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map_or_else(|| PathBuf::from("target"), |w| w.join("target"))
        },
        PathBuf::from,
    )
}

pub mod apiserver;
pub mod contain;
pub mod containerd;
pub mod corpus;
pub mod cri;
pub mod daemon;
pub mod docker;
pub mod host;
pub mod image;
pub mod kernels;
pub mod memory;
pub mod overlay;
pub mod s3;
pub mod uring;

/// True when this process may load eBPF programs. Under `CI=true` a missing privilege panics:
/// CI runs as root, and a privileged test that cannot run there is a failure, not a skip.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{test}: needs root to load eBPF programs, and CI=true"
    );
    eprintln!("skipped {test}: needs root to load eBPF programs");
    false
}

/// A cgroup2 directory created for one test; its processes are the test's own.
pub struct TestCgroup {
    path: PathBuf,
    root: PathBuf,
    id: u64,
}

impl TestCgroup {
    /// Creates `<cgroup2>/<relative>` (parents too), e.g. `detector-test/exec-<pid>`.
    pub fn create(relative: &str) -> io::Result<Self> {
        let root = cgroup2_mount()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup2 mount"))?;
        Self::create_under(root, relative)
    }

    /// A unique cgroup for the named test under `detector-test/` in the cgroup v1 hierarchy
    /// that carries `controller` (e.g. `freezer`, in a hybrid layout). Its id is the
    /// directory's inode there, not a cgroup2 id.
    pub fn v1_for_test(controller: &str, name: &str) -> io::Result<Self> {
        let root = cgroup_v1_mount(controller).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no cgroup v1 hierarchy with the {controller} controller is mounted"),
            )
        })?;
        let relative = format!("detector-test/{name}-{}", std::process::id());
        Self::create_under(root, &relative)
    }

    fn create_under(root: PathBuf, relative: &str) -> io::Result<Self> {
        let path = root.join(relative);
        fs::create_dir_all(&path)?;
        let id = cgroup_id(&path)?;
        Ok(Self { path, root, id })
    }

    /// A unique cgroup for the named test under `detector-test/`.
    pub fn for_test(name: &str) -> io::Result<Self> {
        Self::create(&format!("detector-test/{name}-{}", std::process::id()))
    }

    /// The cgroup id, as the kernel reports it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command whose process starts inside this cgroup (it moves itself there before exec).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> io::Result<Command> {
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))?;
        let mut command = Command::new(program);
        // SAFETY: the closure only calls write(2) on an fd opened before fork, which is
        // async-signal-safe; the file is kept alive by the closure.
        unsafe {
            command.pre_exec(move || {
                let pid = b"0\n";
                let written = libc::write(procs.as_raw_fd(), pid.as_ptr().cast(), pid.len());
                if written < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(command)
    }

    /// Runs `sh -c script` in the cgroup and waits for it; returns its pid.
    pub fn run_shell(&self, script: &str) -> io::Result<u32> {
        let mut child = self.command("/bin/sh")?.arg("-c").arg(script).spawn()?;
        let pid = child.id();
        let status = child.wait()?;
        if !status.success() {
            return Err(io::Error::other(format!("`{script}` failed: {status}")));
        }
        Ok(pid)
    }

    fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Only processes this test started live here; end what is left, then remove the dir.
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() && fs::remove_dir(&self.path).is_ok() {
                break;
            }
            for pid in pids {
                // SAFETY: kill has no memory-safety preconditions; the pid is in our cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Parents the test created (shared by other tests too) go once they are empty.
        let mut parent = self.path.parent();
        while let Some(dir) = parent {
            if dir == self.root || fs::remove_dir(dir).is_err() {
                break;
            }
            parent = dir.parent();
        }
    }
}

/// The mount point of the cgroup v1 hierarchy whose super options name `controller`.
fn cgroup_v1_mount(controller: &str) -> Option<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut fields = right.split_whitespace();
            let (fstype, options) = (fields.next()?, fields.nth(1)?);
            let point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup" && options.split(',').any(|o| o == controller))
                .then(|| PathBuf::from(point))
        })
}

/// Says why `test` cannot run: a failure under `CI=true` (CI has every resource the
/// privileged tests need), elsewhere a skip printed on standard error.
pub fn skip_or_fail(test: &str, why: &str) {
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{test}: {why}, and CI=true"
    );
    eprintln!("skipped {test}: {why}");
}

/// The real sensors and pipeline running in this process.
pub struct Collector {
    runtime: tokio::runtime::Runtime,
    pipeline: Option<Pipeline>,
    batches: mpsc::Receiver<detector::pipeline::Batch>,
    seen: Vec<Event>,
    attached: Vec<&'static str>,
    programs: Vec<ProgramStatus>,
    variant: ProgramVariant,
    quarantine: Option<KernelQuarantine>,
}

/// The build of the programs asked for by `DETECTOR_TEST_PROGRAM_VARIANT`, if set.
pub fn test_program_variant() -> anyhow::Result<Option<ProgramVariant>> {
    let Some(value) = std::env::var_os("DETECTOR_TEST_PROGRAM_VARIANT") else {
        return Ok(None);
    };
    let value = value.to_string_lossy();
    serde_json::from_value(serde_json::Value::String(value.clone().into_owned()))
        .map(Some)
        .map_err(|err| anyhow::anyhow!("DETECTOR_TEST_PROGRAM_VARIANT={value}: {err}"))
}

/// Whether `event` is the exit of process `pid`.
pub fn is_exit_of(event: &Event, pid: u32) -> bool {
    matches!(event.body, detector::event::Body::Exit(_)) && event.process.pid == Some(pid)
}

impl Collector {
    /// Loads and attaches the sensors with `config` and starts the pipeline.
    ///
    /// `DETECTOR_TEST_PROGRAM_VARIANT` (`typed`, `probe-read`) overrides the build of the
    /// programs: `cargo xtask test` runs the sensor tests once more with `probe-read`, the build
    /// for kernels before 6.2, on this kernel.
    pub fn start(config: &SensorsConfig, sample_interval: Duration) -> anyhow::Result<Self> {
        let mut config = config.clone();
        if let Some(variant) = test_program_variant()? {
            config.program_variant = variant;
        }
        Self::with_sensors(
            Sensors::load(&config, ProgramSet::Sensors)?,
            sample_interval,
        )
    }

    /// Starts the pipeline on sensors loaded by the caller; what they recorded before is
    /// delivered first.
    pub fn with_sensors(mut sensors: Sensors, sample_interval: Duration) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let attached = sensors.attached();
        let programs = sensors.programs().to_vec();
        let variant = sensors.variant();
        let quarantine = sensors.take_quarantine()?;
        let (pipeline, batches) = {
            let _guard = runtime.enter();
            Pipeline::spawn(sensors, sample_interval)?
        };
        Ok(Self {
            runtime,
            pipeline: Some(pipeline),
            batches,
            seen: Vec::new(),
            attached,
            programs,
            variant,
            quarantine: Some(quarantine),
        })
    }

    /// The in-kernel network quarantine of these sensors.
    ///
    /// # Panics
    /// After [`Collector::take_quarantine`].
    pub fn quarantine(&mut self) -> &mut KernelQuarantine {
        self.quarantine
            .as_mut()
            .expect("the quarantine was handed over")
    }

    /// Hands the quarantine over (to the containment dispatcher); the programs stay attached.
    pub fn take_quarantine(&mut self) -> Option<KernelQuarantine> {
        self.quarantine.take()
    }

    /// Names of the attached programs.
    pub fn attached(&self) -> &[&'static str] {
        &self.attached
    }

    /// Every program of the set, with why it is not running.
    pub fn programs(&self) -> &[ProgramStatus] {
        &self.programs
    }

    /// The build of the programs loaded.
    pub fn variant(&self) -> ProgramVariant {
        self.variant
    }

    /// Receives events until `done` holds over everything seen so far, or `timeout` passes.
    /// Returns whether it held.
    pub fn wait_until(&mut self, timeout: Duration, done: impl Fn(&[Event]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.seen) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let batch = self
                .runtime
                .block_on(async { tokio::time::timeout(left, self.batches.recv()).await });
            match batch {
                Ok(Some(batch)) => self.seen.extend(batch),
                Ok(None) | Err(_) => return done(&self.seen),
            }
        }
    }

    /// Waits up to `timeout` for the exit of `pid`, then collects what trails it (records
    /// from other CPUs may arrive slightly after); false when the exit never came.
    pub fn wait_for_exit(&mut self, timeout: Duration, pid: u32) -> bool {
        let done = self.wait_until(timeout, |seen| seen.iter().any(|e| is_exit_of(e, pid)));
        self.collect_for(Duration::from_millis(300));
        done
    }

    /// Receives everything that arrives within `duration`.
    pub fn collect_for(&mut self, duration: Duration) {
        self.wait_until(duration, |_| false);
    }

    /// Events seen so far.
    pub fn seen(&self) -> &[Event] {
        &self.seen
    }

    /// Events seen so far from one cgroup.
    pub fn from_cgroup(&self, cgroup_id: u64) -> Vec<&Event> {
        self.seen
            .iter()
            .filter(|e| e.cgroup_id == Some(cgroup_id))
            .collect()
    }

    /// Stops the pipeline and detaches the programs.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        // Nobody reads after this: closing the channel keeps the pipeline's last sends from
        // waiting on a full channel.
        self.batches.close();
        if let Some(pipeline) = self.pipeline.take() {
            self.runtime.block_on(pipeline.stop());
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Prints a summary of events to stderr, to explain a failed assertion.
pub fn dump(events: &[&Event]) {
    let mut err = io::stderr().lock();
    for event in events.iter().take(200) {
        let _ = writeln!(err, "{}", serde_json::to_string(event).unwrap_or_default());
    }
}
