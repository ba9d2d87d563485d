//! Loading, configuring and attaching the kernel programs.
//!
//! [`Sensors::load`] checks the node first (privileges, BTF, cgroup2), reads kernel offsets from
//! BTF, picks the build of the programs the kernel can run (typed loads from Linux 6.2, probe
//! reads before: [`ProgramVariant`]), loads the embedded object with its globals set, fills the
//! configuration maps and attaches every program. A program the kernel refuses is named with the
//! kernel's reason ([`Sensors::programs`]) and the others run, unless
//! `sensors.require_all_programs` makes that fatal. [`Sensors::detach`] and [`Sensors::attach`] take the programs off their hooks
//! and put them back without loading them again. Dropping [`Sensors`] detaches them all, in
//! the reverse order of attaching (`sys_exit` before the exit program its task cache relies on).

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Btf, Ebpf, EbpfLoader, VerifierLogLevel,
    maps::{
        Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, ProgramArray,
        RingBuf, lpm_trie::Key,
    },
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr,
        ProgramError, RawTracePoint, cgroup_skb::CgroupSkbLinkId,
        cgroup_sock_addr::CgroupSockAddrLinkId, links::FdLink,
        raw_trace_point::RawTracePointLinkId, tp_btf::BtfTracePointLinkId,
    },
};
use detector_common::{
    GLOBAL_DAEMON_TGID, GLOBAL_DEDUP_WINDOW_NS, GLOBAL_IO_URING, GLOBAL_KERNEL_TYPES,
    GLOBAL_OFFSETS, GLOBAL_READ_PREFILTER, GLOBAL_WAKEUP_BYTES, GLOBAL_WATCH_MODE, MAP_EGRESS,
    MAP_EVENTS, MAP_PATH_CLASS, MAP_PATH_OPS, MAP_QUARANTINE, MAP_QUARANTINE_ACTIVE, MAP_STATS,
    MAP_TASK_CACHE, MAP_WATCH_GENERATION, MAP_WATCH_KNOWN, MAP_WATCH_ROOTS, PATH_CLASS_KEY_BYTES,
    PATH_OP_OPEN, PATH_OP_PROGRAMS, PathClassData, TaskCacheEntry, TrafficCounters, WatchMode,
};
use tracing::{debug, info, warn};

mod classes;
mod kfunc;
pub mod pin;

pub use classes::{path_class_entries, read_prefilter};
use kfunc::with_kfunc_calls;

use crate::{
    btf::{BtfError, kernel_layout},
    cgroup,
    config::{ProgramVariant, SensorsConfig, Watch},
    paths::PathClasses,
    quarantine::KernelQuarantine,
};

/// The eBPF object built by `build.rs` from `detector-ebpf`: typed loads, for Linux 6.2 and
/// later.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detector"));
/// The same programs built with the `probe-read` feature, for kernels from 5.10 to 6.1.
static EBPF_OBJECT_PROBE_READ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe-read/detector"));

/// Failure to bring up the sensors.
#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    /// Programs detached by [`Sensors::detach`] still run: something holds their links.
    #[error(
        "detached programs (ids {programs:?}) are still linked after {waited:?}: a process holds the links' descriptors"
    )]
    StillLinked {
        programs: Vec<u32>,
        waited: Duration,
    },
    /// The daemon lacks the privileges to load and attach eBPF programs.
    #[error(
        "loading eBPF programs needs root (CAP_SYS_ADMIN, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN); running as uid {uid} with effective capabilities {capabilities:#x}"
    )]
    NotPrivileged {
        /// Effective uid.
        uid: u32,
        /// Effective capability mask from /proc/self/status.
        capabilities: u64,
    },
    /// The kernel does not expose BTF.
    #[error(
        "kernel BTF not found at {0}: the kernel needs CONFIG_DEBUG_INFO_BTF (or set sensors.btf_path)"
    )]
    MissingBtf(PathBuf),
    /// The kernel's BTF could not be parsed for a BTF tracepoint.
    #[error("cannot read the kernel's BTF for BTF tracepoints: {0}")]
    KernelBtf(#[source] aya::BtfError),
    /// Offsets could not be read from BTF.
    #[error(transparent)]
    Btf(#[from] BtfError),
    /// No cgroup2 hierarchy is mounted.
    #[error(
        "no cgroup2 hierarchy is mounted (looked in /proc/self/mountinfo); mount one or set sensors.cgroup2_path"
    )]
    MissingCgroup2,
    /// The cgroup2 directory could not be opened.
    #[error("cannot open cgroup2 directory {path}: {source}")]
    OpenCgroup {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The ring buffer's fd could not be registered for polling.
    #[error("cannot poll the ring buffer: {0}")]
    RingPoll(#[source] io::Error),
    /// `sensors.program_variant` asks for a build this kernel cannot run.
    #[error(
        "sensors.program_variant is typed, but the kernel's BTF has no function bpf_rdonly_cast (Linux 6.2 and later): use auto or probe-read"
    )]
    TypedUnsupported,
    /// A program could not be loaded or attached and `sensors.require_all_programs` is set.
    #[error(
        "eBPF program {program} is not running ({reason}), and sensors.require_all_programs is set"
    )]
    Required {
        /// The program.
        program: &'static str,
        /// The kernel's reason.
        reason: String,
    },
    /// Not one program could be loaded and attached.
    #[error("no eBPF program runs on this kernel: {0}")]
    NothingRunning(String),
    /// The embedded object could not be loaded.
    #[error("cannot load the eBPF object: {0}")]
    Object(#[source] aya::EbpfError),
    /// The embedded object could not be read as ELF to place its kernel-function calls.
    #[error("cannot read the eBPF object to place its kernel-function calls: {0}")]
    ObjectFormat(#[source] object::Error),
    /// A program is missing from the object (a build mismatch).
    #[error("eBPF program {0} is missing from the object")]
    MissingProgram(&'static str),
    /// The number of possible CPUs could not be read (for a per-CPU map's values).
    #[error("cannot count the possible CPUs: {0}")]
    Cpus(#[source] io::Error),
    /// A map is missing from the object (a build mismatch).
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    /// A map operation failed.
    #[error("eBPF map {map}: {source}")]
    Map {
        /// The map.
        map: &'static str,
        /// What went wrong.
        #[source]
        source: aya::maps::MapError,
    },
    /// The verifier rejected a program, or attaching it failed.
    #[error("eBPF program {program} failed to {stage}: {source}")]
    Program {
        /// The program.
        program: &'static str,
        /// `load` or `attach`.
        stage: &'static str,
        /// The error, with the verifier log for load failures.
        #[source]
        source: ProgramError,
    },
}

/// Which programs to attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramSet {
    /// The detector's sensors.
    Sensors,
    /// Do-nothing programs on the same tracepoints, the cost floor for benchmarks.
    Noop,
}

/// How often a program ran and for how long in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramStats {
    /// The program.
    pub name: &'static str,
    /// Times it ran.
    pub runs: u64,
    /// Time it ran, in total.
    pub run_time: std::time::Duration,
    /// Instructions the verifier went through to load it (of its 1,000,000 limit), when the
    /// kernel says (5.16 and later).
    pub verified_instructions: Option<u32>,
}

/// One program of the set on this kernel: running, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramStatus {
    /// The program.
    pub name: &'static str,
    /// `None` when it is loaded and attached (or, for a tail-called program, in its slot);
    /// else the stage that failed and the kernel's reason (the verifier's last words).
    pub missing: Option<String>,
    /// Instructions the verifier walked to accept it (its limit is 1,000,000): how close the
    /// program came on this kernel.
    pub verified_instructions: Option<u32>,
    /// Not tried: the kernel lacks what it needs (`missing` says what); not a refusal.
    pub unsupported: bool,
}

/// The loaded and attached programs.
pub struct Sensors {
    ebpf: Ebpf,
    variant: ProgramVariant,
    require_all: bool,
    /// Every program of the set in load order, with why it is not running.
    status: Vec<ProgramStatus>,
    cgroup2: PathBuf,
    set: ProgramSet,
    /// The set's programs and their hooks, loaded.
    hooks: Vec<Hook>,
    /// The programs attached; empty when detached.
    links: Vec<Link>,
    watch: Watch,
    watch_layout: cgroup::WatchLayout,
    generation: u32,
    path_classes: PathClasses,
    /// Where the quarantine is pinned (`sensors.pin_dir`), when it is.
    pins: Option<pin::PinDir>,
    /// Why the quarantine is not pinned though `sensors.pin_dir` asks for it.
    pin_failure: Option<String>,
}

impl Drop for Sensors {
    fn drop(&mut self) {
        // In order; the loaded object would drop the rest of its links in any order.
        if let Err(err) = self.detach() {
            tracing::warn!(%err, "detaching the eBPF programs");
        }
        if let Some(pins) = self.pins.take() {
            pins.close();
        }
    }
}

/// A loaded program and the hook it attaches to.
#[derive(Debug, Clone, Copy)]
enum Hook {
    BtfTracePoint(&'static str),
    RawTracePoint(&'static str, &'static str),
    CgroupSockAddr(&'static str),
    CgroupSkb(&'static str, CgroupSkbAttachType),
}

impl Hook {
    fn program(&self) -> &'static str {
        match *self {
            Self::BtfTracePoint(name)
            | Self::RawTracePoint(name, _)
            | Self::CgroupSockAddr(name)
            | Self::CgroupSkb(name, _) => name,
        }
    }
}

/// An attached program, by the link its program keeps.
enum Link {
    BtfTracePoint(&'static str, BtfTracePointLinkId),
    RawTracePoint(&'static str, RawTracePointLinkId),
    CgroupSockAddr(&'static str, CgroupSockAddrLinkId),
    CgroupSkb(&'static str, CgroupSkbLinkId),
}

impl Link {
    /// The program the link attaches.
    fn program(&self) -> &'static str {
        match self {
            Self::BtfTracePoint(name, _)
            | Self::RawTracePoint(name, _)
            | Self::CgroupSockAddr(name, _)
            | Self::CgroupSkb(name, _) => name,
        }
    }
}

/// How long [`Sensors::detach`] waits for the kernel to let go of the links it closed.
const UNLINK_WAIT: Duration = Duration::from_secs(2);

/// Waits until no link in the kernel attaches one of `programs` (by id). Closing a link's
/// descriptor releases the link only with its last reference: a process forked at that moment
/// (any thread's spawn, until its exec closes what it inherited) holds one, and the program
/// keeps running until then.
fn wait_until_unlinked(programs: &[u32]) -> Result<(), SensorError> {
    if programs.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + UNLINK_WAIT;
    loop {
        let linked: Vec<u32> = aya::programs::loaded_links()
            .filter_map(Result::ok)
            .map(|link| link.program_id())
            .filter(|id| programs.contains(id))
            .collect();
        if linked.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(SensorError::StillLinked {
                programs: linked,
                waited: UNLINK_WAIT,
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// BTF tracepoints: (program, tracepoint). `sys_exit` reads its typed `pt_regs` and the
/// kernel structures behind the current task with plain loads; a raw tracepoint would need a
/// helper call for each.
const SENSOR_BTF_TRACEPOINTS: [(&str, &str); 1] = [("sys_exit", "sys_exit")];
/// Raw tracepoints: (program, tracepoint).
const SENSOR_TRACEPOINTS: [(&str, &str); 2] = [
    ("sched_process_exec", "sched_process_exec"),
    ("sched_process_exit", "sched_process_exit"),
];
/// The io_uring program, on the BTF tracepoint of the same name (Linux 5.19 and later).
const IO_URING_PROGRAM: &str = "io_uring_complete";
const NOOP_BTF_TRACEPOINTS: [(&str, &str); 1] = [("noop_sys_exit", "sys_exit")];
const NOOP_TRACEPOINTS: [(&str, &str); 2] = [
    ("noop_sched_process_exec", "sched_process_exec"),
    ("noop_sched_process_exit", "sched_process_exit"),
];

impl Sensors {
    /// Checks the node, loads the programs of `set` and attaches them. Nothing is pinned: the
    /// programs and the quarantine end with the value (see [`Sensors::load_pinned`]).
    pub fn load(config: &SensorsConfig, set: ProgramSet) -> Result<Self, SensorError> {
        Self::load_with(config, set, None, EBPF_OBJECT)
    }

    /// [`Sensors::load`] from another build of the typed eBPF object (the file the build
    /// script leaves as `detector` in its output directory), for the benchmark to compare two
    /// builds in the same run. The kernel must run the typed build.
    pub fn load_object(
        config: &SensorsConfig,
        set: ProgramSet,
        object: &[u8],
    ) -> Result<Self, SensorError> {
        let config = SensorsConfig {
            program_variant: ProgramVariant::Typed,
            ..config.clone()
        };
        Self::load_with(&config, set, None, object)
    }

    /// [`Sensors::load`], with the network quarantine pinned in `pin_dir` (what the daemon does
    /// with `sensors.pin_dir`): an earlier run's pinned quarantine is adopted, and this run's
    /// stays pinned when the value drops with cgroups quarantined. When the directory cannot
    /// be made ready the programs load unpinned and [`Sensors::pin_status`] says why.
    pub fn load_pinned(
        config: &SensorsConfig,
        set: ProgramSet,
        pin_dir: &Path,
    ) -> Result<Self, SensorError> {
        Self::load_with(config, set, Some(pin_dir), EBPF_OBJECT)
    }

    fn load_with(
        config: &SensorsConfig,
        set: ProgramSet,
        pin_dir: Option<&Path>,
        typed_object: &[u8],
    ) -> Result<Self, SensorError> {
        check_privileges()?;
        if !config.btf_path.exists() {
            return Err(SensorError::MissingBtf(config.btf_path.clone()));
        }
        let cgroup2 = match &config.cgroup2_path {
            Some(path) => path.clone(),
            None => cgroup::cgroup2_mount().ok_or(SensorError::MissingCgroup2)?,
        };
        let layout = kernel_layout(&config.btf_path)?;
        debug!(?layout, "kernel layout from BTF");
        let (variant, patched) = match (config.program_variant, layout.rdonly_cast) {
            (ProgramVariant::Auto | ProgramVariant::Typed, Some(cast)) => (
                ProgramVariant::Typed,
                Some(with_kfunc_calls(typed_object, cast)?),
            ),
            (ProgramVariant::Typed, None) => return Err(SensorError::TypedUnsupported),
            (ProgramVariant::Auto | ProgramVariant::ProbeRead, _) => {
                (ProgramVariant::ProbeRead, None)
            }
        };
        let object = patched
            .as_ref()
            .map_or(EBPF_OBJECT_PROBE_READ, |patched| patched.bytes());

        let tgid = std::process::id();
        let watch_mode = match config.watch {
            Watch::All => WatchMode::All,
            Watch::Containers => WatchMode::Containers,
        } as u32;
        let dedup_ns = config.write_dedup_window_ms.saturating_mul(1_000_000);
        let prefilter = read_prefilter(&config.read_sensitive_paths);
        // A sixteenth of the ring: the reader is woken long before it fills, and drains what
        // waits below that on its own tick (`RING_DRAIN_INTERVAL_MS`).
        let ring_bytes = config.ring_bytes();
        let wakeup_bytes = u64::from(ring_bytes / 16);
        // The quarantine outlives the daemon when pinned; only the sensors' set enforces it.
        let (pins, pin_failure) = match (pin_dir, set) {
            (Some(dir), ProgramSet::Sensors) => match pin::PinDir::prepare(dir) {
                Ok(pins) => (Some(pins), None),
                Err(err) => {
                    warn!("the network quarantine is not pinned and ends with the daemon: {err}");
                    (None, Some(err.to_string()))
                }
            },
            _ => (None, None),
        };
        let mut loader = EbpfLoader::new();
        for (name, path) in pins.iter().flat_map(pin::PinDir::maps) {
            loader.map_pin_path(name, path);
        }
        let ebpf = loader
            // The verifier's verdict and its statistics, not its walk: a rejected program's
            // walk fills any buffer before Linux 6.4 (no rotating log), and each bigger
            // buffer is another whole verification, minutes on a slow machine.
            .verifier_log_level(VerifierLogLevel::STATS)
            .override_global(GLOBAL_DAEMON_TGID, &tgid, true)
            .override_global(GLOBAL_WATCH_MODE, &watch_mode, true)
            .override_global(GLOBAL_DEDUP_WINDOW_NS, &dedup_ns, true)
            .override_global(GLOBAL_WAKEUP_BYTES, &wakeup_bytes, true)
            .override_global(GLOBAL_OFFSETS, &layout.offsets, true)
            .override_global(GLOBAL_KERNEL_TYPES, &layout.types, true)
            .override_global(
                GLOBAL_IO_URING,
                &layout.io_uring.clone().unwrap_or_default(),
                true,
            )
            .override_global(GLOBAL_READ_PREFILTER, &prefilter, true)
            .map_max_entries(MAP_EVENTS, ring_bytes)
            .load(object)
            .map_err(SensorError::Object)?;
        let mut sensors = Self {
            ebpf,
            variant,
            require_all: config.require_all_programs,
            status: Vec::new(),
            cgroup2,
            set,
            hooks: Vec::new(),
            links: Vec::new(),
            watch: config.watch,
            watch_layout: cgroup::WatchLayout::default(),
            generation: 0,
            path_classes: PathClasses::new(config),
            pins,
            pin_failure,
        };
        sensors.fill_path_classes(config)?;
        sensors.refresh_watch_roots()?;
        sensors.load_programs(layout.io_uring.as_ref().err())?;
        sensors.attach()?;
        sensors.pin_enforcement();
        if sensors.links.is_empty() && sensors.pinned_programs().is_empty() {
            let reasons: Vec<String> = sensors
                .status
                .iter()
                .filter_map(|p| Some(format!("{} ({})", p.name, p.missing.as_ref()?)))
                .collect();
            return Err(SensorError::NothingRunning(reasons.join("; ")));
        }
        let missing: Vec<_> = sensors
            .status
            .iter()
            .filter(|status| status.missing.is_some())
            .map(|status| status.name)
            .collect();
        info!(
            programs = ?sensors.attached(),
            ?missing,
            variant = variant.as_str(),
            cgroup2 = %sensors.cgroup2.display(),
            watch = ?config.watch,
            "eBPF programs attached (BTF and raw tracepoints, cgroup hooks; tracefs not needed)"
        );
        Ok(sensors)
    }

    /// The build of the programs loaded: [`ProgramVariant::Typed`] or
    /// [`ProgramVariant::ProbeRead`].
    pub fn variant(&self) -> ProgramVariant {
        self.variant
    }

    /// Every program of the set, in load order, with why it is not running.
    pub fn programs(&self) -> &[ProgramStatus] {
        &self.status
    }

    /// Records that `name` failed at `stage`: an error when every program is required, else
    /// a warning and its status, and the others go on.
    fn missing(
        &mut self,
        name: &'static str,
        stage: &'static str,
        reason: String,
    ) -> Result<(), SensorError> {
        self.not_running(name, format!("{stage}: {reason}"), false)
    }

    /// Records that `name` is not tried on this kernel, which lacks what it needs (`reason`):
    /// an error when every program is required, else a warning and its status.
    fn unsupported(&mut self, name: &'static str, reason: &str) -> Result<(), SensorError> {
        self.not_running(name, format!("not on this kernel: {reason}"), true)
    }

    /// [`Sensors::missing`] and [`Sensors::unsupported`]: `name`'s status (replaced when it
    /// loaded before and failed to attach), or the start's error when every program is
    /// required.
    fn not_running(
        &mut self,
        name: &'static str,
        reason: String,
        unsupported: bool,
    ) -> Result<(), SensorError> {
        if self.require_all {
            return Err(SensorError::Required {
                program: name,
                reason,
            });
        }
        warn!(program = name, %reason, variant = self.variant.as_str(), "eBPF program not running; the others go on");
        let status = ProgramStatus {
            name,
            missing: Some(reason),
            verified_instructions: None,
            unsupported,
        };
        match self.status.iter_mut().find(|status| status.name == name) {
            Some(known) => *known = status,
            None => self.status.push(status),
        }
        Ok(())
    }

    /// Records the outcome of loading the program of `hook`: loaded, it is attached with the
    /// others; refused, it is [`Sensors::missing`].
    fn record_load(
        &mut self,
        hook: Hook,
        loaded: Result<(), ProgramError>,
    ) -> Result<(), SensorError> {
        let name = hook.program();
        match loaded {
            Ok(()) => {
                self.loaded(name);
                self.hooks.push(hook);
                Ok(())
            }
            Err(err) => self.missing(name, "load", reason(&err)),
        }
    }

    /// Records that `name` loaded.
    fn loaded(&mut self, name: &'static str) {
        let verified_instructions = self
            .ebpf
            .program(name)
            .and_then(|program| program.info().ok())
            .and_then(|info| info.verified_instruction_count());
        debug!(program = name, ?verified_instructions, "loaded");
        self.status.push(ProgramStatus {
            name,
            missing: None,
            verified_instructions,
            unsupported: false,
        });
    }

    /// Names of the loaded programs, attached unless [`Sensors::detach`]ed.
    pub fn attached(&self) -> Vec<&'static str> {
        self.hooks.iter().map(Hook::program).collect()
    }

    /// The prefix classes the kernel was given, for paths it leaves to user space to classify
    /// again (see [`crate::paths`]).
    pub fn path_classes(&self) -> &PathClasses {
        &self.path_classes
    }

    /// The cgroup2 mount the cgroup programs are attached to.
    pub fn cgroup2(&self) -> &Path {
        &self.cgroup2
    }

    /// Runs and total run time of each attached program and of the programs `sys_exit`
    /// tail-calls, as the kernel counts them while run-time statistics are enabled
    /// (`aya::sys::enable_stats`, or the `kernel.bpf_stats_enabled` sysctl; zero otherwise:
    /// a tail-called program's runs count in its caller's), with the verifier's instruction
    /// count of each.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        self.attached()
            .into_iter()
            .chain(PATH_OP_PROGRAMS)
            .filter_map(|name| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some(ProgramStats {
                    name,
                    runs: info.run_count(),
                    run_time: info.run_time(),
                    verified_instructions: info.verified_instruction_count(),
                })
            })
            .collect()
    }

    /// Loads the programs of the set, verifier included; attaches nothing.
    ///
    /// `io_uring_unsupported`: why this kernel's io_uring tracepoint cannot be used, if so.
    fn load_programs(&mut self, io_uring_unsupported: Option<&String>) -> Result<(), SensorError> {
        let btf = Btf::from_sys_fs().map_err(SensorError::KernelBtf)?;
        let (btf_tracepoints, tracepoints): (&[_], &[_]) = match self.set {
            ProgramSet::Sensors => (&SENSOR_BTF_TRACEPOINTS, &SENSOR_TRACEPOINTS),
            ProgramSet::Noop => (&NOOP_BTF_TRACEPOINTS, &NOOP_TRACEPOINTS),
        };
        // In attach order. The exit program counts every thread exit, which `sys_exit`'s
        // cache of the current task relies on: it is attached first and detached last.
        for &(name, tracepoint) in tracepoints {
            let loaded = self.program::<RawTracePoint>(name)?.load();
            self.record_load(Hook::RawTracePoint(name, tracepoint), loaded)?;
        }
        // `sys_exit`'s task cache is only right while every thread exit is counted.
        let exits_counted = self.set == ProgramSet::Noop
            || self
                .hooks
                .iter()
                .any(|hook| hook.program() == "sched_process_exit");
        for &(name, tracepoint) in btf_tracepoints {
            if !exits_counted {
                self.missing(
                    name,
                    "load",
                    "needs sched_process_exit, which counts the thread exits its task cache relies on"
                        .to_owned(),
                )?;
                continue;
            }
            let loaded = self.program::<BtfTracePoint>(name)?.load(tracepoint, &btf);
            self.record_load(Hook::BtfTracePoint(name), loaded)?;
        }
        if self.set == ProgramSet::Sensors {
            self.load_path_op_programs(&btf)?;
            let name = IO_URING_PROGRAM;
            match io_uring_unsupported {
                Some(reason) => self.unsupported(name, reason)?,
                None => {
                    let loaded = self.program::<BtfTracePoint>(name)?.load(name, &btf);
                    self.record_load(Hook::BtfTracePoint(name), loaded)?;
                }
            }
            for name in ["connect4", "connect6"] {
                let loaded = self.program::<CgroupSockAddr>(name)?.load();
                self.record_load(Hook::CgroupSockAddr(name), loaded)?;
            }
            for (name, direction) in [
                ("egress", CgroupSkbAttachType::Egress),
                ("ingress", CgroupSkbAttachType::Ingress),
            ] {
                let loaded = self.program::<CgroupSkb>(name)?.load();
                self.record_load(Hook::CgroupSkb(name, direction), loaded)?;
            }
        }
        Ok(())
    }

    /// Loads the programs `sys_exit` tail-calls for unlink, chmod and rename and puts them in
    /// their slots of [`MAP_PATH_OPS`]. They run on `sys_exit` with its context and are never
    /// attached themselves. The map stays open with the object: the kernel empties a program
    /// array when user space closes its last descriptor.
    fn load_path_op_programs(&mut self, btf: &Btf) -> Result<(), SensorError> {
        let dispatch = self.hooks.iter().any(|hook| hook.program() == "sys_exit");
        for (slot, name) in (0u32..).zip(PATH_OP_PROGRAMS) {
            if slot == PATH_OP_OPEN && self.variant == ProgramVariant::Typed {
                // The typed build resolves opens in `sys_exit` itself; the slot stays empty.
                continue;
            }
            if !dispatch {
                self.missing(
                    name,
                    "load",
                    "tail-called from sys_exit, which is not running".to_owned(),
                )?;
                continue;
            }
            let program: &mut BtfTracePoint = self.program(name)?;
            if let Err(err) = program.load("sys_exit", btf) {
                self.missing(name, "load", reason(&err))?;
                continue;
            }
            let fd = program
                .fd()
                .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
                .map_err(program_error(name, "load"))?;
            let mut array: ProgramArray<_> = ProgramArray::try_from(self.map_mut(MAP_PATH_OPS)?)
                .map_err(map_error(MAP_PATH_OPS))?;
            match array.set(slot, &fd, 0) {
                Ok(()) => self.loaded(name),
                Err(err) => {
                    self.missing(name, "load", format!("{MAP_PATH_OPS} slot {slot}: {err}"))?
                }
            }
        }
        Ok(())
    }

    /// Attaches every loaded program to its hook; a no-op when they are attached. On an error
    /// the programs attached so far stay attached (and are detached with [`Sensors::detach`]
    /// or on drop).
    pub fn attach(&mut self) -> Result<(), SensorError> {
        if !self.links.is_empty() {
            return Ok(());
        }
        if self.set == ProgramSet::Sensors {
            self.clear_task_cache()?;
        }
        let root = File::open(&self.cgroup2).map_err(|source| SensorError::OpenCgroup {
            path: self.cgroup2.clone(),
            source,
        })?;
        let mut refused = Vec::new();
        let pinned = self.pinned_programs();
        for hook in self.hooks.clone() {
            if pinned.contains(&hook.program()) {
                continue;
            }
            let link = match hook {
                Hook::BtfTracePoint(name) => {
                    let program: &mut BtfTracePoint = self.program(name)?;
                    program.attach().map(|id| Link::BtfTracePoint(name, id))
                }
                Hook::RawTracePoint(name, tracepoint) => {
                    let program: &mut RawTracePoint = self.program(name)?;
                    program
                        .attach(tracepoint)
                        .map(|id| Link::RawTracePoint(name, id))
                }
                Hook::CgroupSockAddr(name) => {
                    let program: &mut CgroupSockAddr = self.program(name)?;
                    program
                        .attach(&root, CgroupAttachMode::Single)
                        .map(|id| Link::CgroupSockAddr(name, id))
                }
                Hook::CgroupSkb(name, direction) => {
                    let program: &mut CgroupSkb = self.program(name)?;
                    program
                        .attach(&root, direction, CgroupAttachMode::Single)
                        .map(|id| Link::CgroupSkb(name, id))
                }
            };
            match link {
                Ok(link) => self.links.push(link),
                Err(err) => refused.push((hook.program(), reason(&err))),
            }
        }
        // A program the kernel will not attach is not tried again on the next attach.
        for (name, reason) in refused {
            self.hooks.retain(|hook| hook.program() != name);
            self.missing(name, "attach", reason)?;
        }
        Ok(())
    }

    /// Pins the programs that enforce the quarantine (the cgroup hooks) in place of an earlier
    /// run's, and lets go of the earlier run's links for programs this build no longer has. A
    /// link that cannot be pinned stays attached as the others (it ends with the daemon), named
    /// in the log and in [`Sensors::pin_status`].
    fn pin_enforcement(&mut self) {
        let Some(pins) = self.pins.as_mut() else {
            return;
        };
        let mut failures = Vec::new();
        let mut kept = Vec::new();
        for link in std::mem::take(&mut self.links) {
            let (name, fd_link) = match link {
                Link::CgroupSockAddr(name, id) => (
                    name,
                    take_fd_link(&mut self.ebpf, name, |p: &mut CgroupSockAddr| {
                        p.take_link(id)
                    }),
                ),
                Link::CgroupSkb(name, id) => (
                    name,
                    take_fd_link(&mut self.ebpf, name, |p: &mut CgroupSkb| p.take_link(id)),
                ),
                other => {
                    kept.push(other);
                    continue;
                }
            };
            let pinned =
                fd_link.and_then(|link| pins.pin_link(name, link).map_err(|e| e.to_string()));
            if let Err(err) = pinned {
                warn!(program = name, %err, "not pinned: it stops enforcing the quarantine with the daemon");
                failures.push(format!("{name}: {err}"));
            }
        }
        self.links = kept;
        match pins.release_stale_links() {
            Ok(released) if !released.is_empty() => {
                info!(?released, "let go of links an earlier version pinned");
            }
            Ok(_) => {}
            Err(err) => failures.push(err.to_string()),
        }
        if failures.is_empty() {
            info!(dir = %pins.dir().display(), "network quarantine pinned: it holds while no daemon runs");
        } else {
            self.pin_failure = Some(failures.join("; "));
        }
    }

    /// Where the quarantine is pinned, or why it is not (`Err`); `Ok(None)` when
    /// `sensors.pin_dir` is unset.
    pub fn pin_status(&self) -> Result<Option<&Path>, &str> {
        match (&self.pin_failure, &self.pins) {
            (Some(why), _) => Err(why),
            (None, Some(pins)) => Ok(Some(pins.dir())),
            (None, None) => Ok(None),
        }
    }

    /// The programs whose links this run pinned.
    fn pinned_programs(&self) -> Vec<&'static str> {
        self.pins.iter().flat_map(|p| p.programs()).collect()
    }

    /// Empties `sys_exit`'s per-CPU cache of the current task. While detached, exits are not
    /// counted, so an entry from before could name a task that has exited since.
    fn clear_task_cache(&mut self) -> Result<(), SensorError> {
        let mut cache: PerCpuArray<_, TaskCacheEntry> =
            PerCpuArray::try_from(self.map_mut(MAP_TASK_CACHE)?)
                .map_err(map_error(MAP_TASK_CACHE))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| SensorError::Cpus(source))?;
        let empty = PerCpuValues::try_from(vec![TaskCacheEntry::default(); cpus])
            .map_err(SensorError::Cpus)?;
        cache.set(0, empty, 0).map_err(map_error(MAP_TASK_CACHE))
    }

    /// Detaches every program, keeping them loaded with their maps and configuration, so that
    /// [`Sensors::attach`] puts them back at once (no verifier run). The benchmark uses it to
    /// switch the sensors on and off between short stretches of a workload. Returns once the
    /// kernel has let go of every link (see [`wait_until_unlinked`]): from then on no program
    /// of the set runs.
    pub fn detach(&mut self) -> Result<(), SensorError> {
        let mut detached = Vec::new();
        while let Some(link) = self.links.pop() {
            if let Some(info) = self
                .ebpf
                .program(link.program())
                .and_then(|program| program.info().ok())
            {
                detached.push(info.id());
            }
            match link {
                Link::BtfTracePoint(name, id) => {
                    let program: &mut BtfTracePoint = self.program(name)?;
                    program.detach(id).map_err(program_error(name, "detach"))?;
                }
                Link::RawTracePoint(name, id) => {
                    let program: &mut RawTracePoint = self.program(name)?;
                    program.detach(id).map_err(program_error(name, "detach"))?;
                }
                Link::CgroupSockAddr(name, id) => {
                    let program: &mut CgroupSockAddr = self.program(name)?;
                    program.detach(id).map_err(program_error(name, "detach"))?;
                }
                Link::CgroupSkb(name, id) => {
                    let program: &mut CgroupSkb = self.program(name)?;
                    program.detach(id).map_err(program_error(name, "detach"))?;
                }
            }
        }
        wait_until_unlinked(&detached)
    }

    fn program<'a, T>(&'a mut self, name: &'static str) -> Result<&'a mut T, SensorError>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        program_of(&mut self.ebpf, name)
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, SensorError> {
        self.ebpf.map_mut(name).ok_or(SensorError::MissingMap(name))
    }

    fn fill_path_classes(&mut self, config: &SensorsConfig) -> Result<(), SensorError> {
        let mut trie: LpmTrie<_, PathClassData, u32> =
            LpmTrie::try_from(self.map_mut(MAP_PATH_CLASS)?).map_err(map_error(MAP_PATH_CLASS))?;
        for (prefix, class) in path_class_entries(config) {
            let mut data = [0u8; PATH_CLASS_KEY_BYTES];
            data[..prefix.len()].copy_from_slice(&prefix);
            let key = Key::new((prefix.len() * 8) as u32, data);
            trie.insert(&key, class, 0)
                .map_err(map_error(MAP_PATH_CLASS))?;
        }
        Ok(())
    }

    /// In `containers` mode, classifies the cgroups where container roots live and hands what
    /// changed to the kernel (container roots, and the node's own cgroups there), invalidating
    /// its cached decisions. Until a new cgroup is classified the kernel watches it, so a new
    /// root's first containers are seen from their first event. Cheap: two directory levels
    /// are read.
    pub fn refresh_watch_roots(&mut self) -> Result<(), SensorError> {
        if self.watch != Watch::Containers {
            return Ok(());
        }
        let layout = cgroup::watch_layout(&self.cgroup2);
        if layout == self.watch_layout {
            return Ok(());
        }
        let previous = std::mem::take(&mut self.watch_layout);
        for (name, before, now) in [
            (MAP_WATCH_ROOTS, &previous.roots, &layout.roots),
            (MAP_WATCH_KNOWN, &previous.known, &layout.known),
        ] {
            let mut map: HashMap<_, u64, u32> =
                HashMap::try_from(self.map_mut(name)?).map_err(map_error(name))?;
            for id in before {
                if now.binary_search(id).is_err() {
                    // Already gone with its cgroup is fine.
                    let _ = map.remove(id);
                }
            }
            for id in now {
                if before.binary_search(id).is_err() {
                    map.insert(id, 1, 0).map_err(map_error(name))?;
                }
            }
        }
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let mut array: Array<_, u32> = Array::try_from(self.map_mut(MAP_WATCH_GENERATION)?)
            .map_err(map_error(MAP_WATCH_GENERATION))?;
        array
            .set(0, generation, 0)
            .map_err(map_error(MAP_WATCH_GENERATION))?;
        debug!(
            roots = ?layout.roots,
            known = layout.known.len(),
            generation,
            "container cgroup roots updated"
        );
        self.watch_layout = layout;
        Ok(())
    }

    /// Takes the ring buffer; call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, SensorError> {
        let map = self
            .ebpf
            .take_map(MAP_EVENTS)
            .ok_or(SensorError::MissingMap(MAP_EVENTS))?;
        RingBuf::try_from(map).map_err(map_error(MAP_EVENTS))
    }

    /// Takes the handle on the network quarantine; call once.
    pub fn take_quarantine(&mut self) -> Result<KernelQuarantine, SensorError> {
        let map = self
            .ebpf
            .take_map(MAP_QUARANTINE)
            .ok_or(SensorError::MissingMap(MAP_QUARANTINE))?;
        let active = self
            .ebpf
            .take_map(MAP_QUARANTINE_ACTIVE)
            .ok_or(SensorError::MissingMap(MAP_QUARANTINE_ACTIVE))?;
        let own_cgroup = cgroup::own_cgroup_path()
            .and_then(|relative| cgroup::cgroup_id(&self.cgroup2.join(relative)).ok());
        Ok(KernelQuarantine::new(
            HashMap::try_from(map).map_err(map_error(MAP_QUARANTINE))?,
            Array::try_from(active).map_err(map_error(MAP_QUARANTINE_ACTIVE))?,
            own_cgroup,
        ))
    }

    /// Takes the counters sampled by user space: egress per cgroup and the stats array.
    pub fn take_counters(&mut self) -> Result<Counters, SensorError> {
        let egress = self
            .ebpf
            .take_map(MAP_EGRESS)
            .ok_or(SensorError::MissingMap(MAP_EGRESS))?;
        let stats = self
            .ebpf
            .take_map(MAP_STATS)
            .ok_or(SensorError::MissingMap(MAP_STATS))?;
        Ok(Counters {
            egress: PerCpuHashMap::try_from(egress).map_err(map_error(MAP_EGRESS))?,
            stats: PerCpuArray::try_from(stats).map_err(map_error(MAP_STATS))?,
        })
    }
}

/// Counters kept in the kernel and sampled by user space.
pub struct Counters {
    egress: PerCpuHashMap<MapData, u64, TrafficCounters>,
    stats: PerCpuArray<MapData, u64>,
}

impl Counters {
    /// Egress totals per cgroup id, summed over CPUs.
    pub fn egress(&self) -> BTreeMap<u64, TrafficCounters> {
        let mut totals = BTreeMap::new();
        for entry in self.egress.iter() {
            // An entry deleted between the key walk and its lookup is simply absent.
            let Ok((cgroup_id, per_cpu)) = entry else {
                continue;
            };
            let total = per_cpu
                .iter()
                .fold(TrafficCounters::default(), |acc, c| TrafficCounters {
                    bytes: acc.bytes + c.bytes,
                    packets: acc.packets + c.packets,
                });
            totals.insert(cgroup_id, total);
        }
        totals
    }

    /// Removes an idle cgroup's egress entry.
    pub fn forget_egress(&mut self, cgroup_id: u64) {
        let _ = self.egress.remove(&cgroup_id);
    }

    /// Every stats counter summed over CPUs, indexed by [`detector_common::Stat`].
    pub fn stats(&self) -> Vec<u64> {
        self.stats
            .iter()
            .map(|values| values.map(|v| v.iter().sum()).unwrap_or(0))
            .collect()
    }
}

fn program_of<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, SensorError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or(SensorError::MissingProgram(name))?;
    program.try_into().map_err(program_error(name, "load"))
}

/// The link `take` takes from program `name`, as a bpf link that can be pinned; why not, when
/// it cannot (attached without a bpf link, before Linux 5.7).
fn take_fd_link<'a, T: 'a, L>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
    take: impl FnOnce(&mut T) -> Result<L, ProgramError>,
) -> Result<FdLink, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    let program: &mut T = program_of(ebpf, name).map_err(|err| err.to_string())?;
    let link = take(program)
        .map_err(program_error(name, "take the link"))
        .map_err(|err| err.to_string())?;
    FdLink::try_from(link).map_err(|err| format!("not a bpf link: {err}"))
}

fn program_error(
    program: &'static str,
    stage: &'static str,
) -> impl FnOnce(ProgramError) -> SensorError {
    move |source| SensorError::Program {
        program,
        stage,
        source,
    }
}

/// A program error in a line or a few: for a verifier rejection, the syscall's error and the
/// verifier's last lines (where it says what it refused and how far it got), not its whole log.
fn reason(err: &ProgramError) -> String {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect();
            let last = &lines[lines.len().saturating_sub(3)..];
            if last.is_empty() {
                format!("the verifier refused it ({io_error})")
            } else {
                format!("the verifier refused it ({io_error}): {}", last.join(" | "))
            }
        }
        other => {
            // The syscall's own error sits below aya's (`bpf_link_create` failed: EBADF...).
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(err) = source {
                text.push_str(": ");
                text.push_str(&err.to_string());
                source = err.source();
            }
            text
        }
    }
}

fn map_error(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> SensorError {
    move |source| SensorError::Map { map, source }
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn check_privileges() -> Result<(), SensorError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let capabilities = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| capabilities & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON) && has(CAP_NET_ADMIN)) {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    Err(SensorError::NotPrivileged { uid, capabilities })
}
