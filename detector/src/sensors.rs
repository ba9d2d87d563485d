//! Loading, configuring and attaching the kernel programs.
//!
//! [`Sensors::load`] checks the node first (privileges, BTF, cgroup2), reads kernel offsets from
//! BTF, loads the embedded object with its globals set, fills the configuration maps and attaches
//! every program. [`Sensors::detach`] and [`Sensors::attach`] take the programs off their hooks
//! and put them back without loading them again. Dropping [`Sensors`] detaches them all, in
//! the reverse order of attaching (`sys_exit` before the exit program its task cache relies on).

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, ProgramArray,
        RingBuf, lpm_trie::Key,
    },
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr,
        ProgramError, RawTracePoint, cgroup_skb::CgroupSkbLinkId,
        cgroup_sock_addr::CgroupSockAddrLinkId, raw_trace_point::RawTracePointLinkId,
        tp_btf::BtfTracePointLinkId,
    },
};
use detector_common::{
    GLOBAL_DAEMON_TGID, GLOBAL_DEDUP_WINDOW_NS, GLOBAL_KERNEL_TYPES, GLOBAL_OFFSETS,
    GLOBAL_READ_PREFILTER, GLOBAL_WATCH_MODE, KFUNC_RDONLY_CAST_MARKER, MAP_EGRESS, MAP_EVENTS,
    MAP_PATH_CLASS, MAP_PATH_OPS, MAP_QUARANTINE, MAP_QUARANTINE_ACTIVE, MAP_STATS, MAP_TASK_CACHE,
    MAP_WATCH_GENERATION, MAP_WATCH_KNOWN, MAP_WATCH_ROOTS, NameWord, PATH_CLASS_KEY_BYTES,
    PATH_OP_PROGRAMS, PathClassData, READ_PREFILTER_SLOTS, ReadPrefilter, TOP_COMPONENTS,
    TaskCacheEntry, TopComponents, TrafficCounters, WatchMode, path_class,
};
use tracing::{debug, info};

use crate::{
    btf::{BtfError, kernel_layout},
    cgroup,
    config::{SensorsConfig, Watch, is_pattern},
    paths::PathClasses,
    quarantine::KernelQuarantine,
};

/// The eBPF object built by `build.rs` from `detector-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/detector"));

/// Failure to bring up the sensors.
#[derive(Debug, thiserror::Error)]
pub enum SensorError {
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
}

/// The loaded and attached programs.
pub struct Sensors {
    ebpf: Ebpf,
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
}

impl Drop for Sensors {
    fn drop(&mut self) {
        // In order; the loaded object would drop the rest of its links in any order.
        if let Err(err) = self.detach() {
            tracing::warn!(%err, "detaching the eBPF programs");
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

/// BTF tracepoints: (program, tracepoint). `sys_exit` reads its typed `pt_regs` and the
/// kernel structures behind the current task with plain loads; a raw tracepoint would need a
/// helper call for each.
const SENSOR_BTF_TRACEPOINTS: [(&str, &str); 1] = [("sys_exit", "sys_exit")];
/// Raw tracepoints: (program, tracepoint).
const SENSOR_TRACEPOINTS: [(&str, &str); 2] = [
    ("sched_process_exec", "sched_process_exec"),
    ("sched_process_exit", "sched_process_exit"),
];
const NOOP_BTF_TRACEPOINTS: [(&str, &str); 1] = [("noop_sys_exit", "sys_exit")];
const NOOP_TRACEPOINTS: [(&str, &str); 2] = [
    ("noop_sched_process_exec", "sched_process_exec"),
    ("noop_sched_process_exit", "sched_process_exit"),
];

impl Sensors {
    /// Checks the node, loads the programs of `set` and attaches them.
    pub fn load(config: &SensorsConfig, set: ProgramSet) -> Result<Self, SensorError> {
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
        let object = with_kfunc_calls(EBPF_OBJECT, layout.rdonly_cast)?;

        let tgid = std::process::id();
        let watch_mode = match config.watch {
            Watch::All => WatchMode::All,
            Watch::Containers => WatchMode::Containers,
        } as u32;
        let dedup_ns = config.write_dedup_window_ms.saturating_mul(1_000_000);
        let prefilter = read_prefilter(&config.read_sensitive_paths);
        let ebpf = EbpfLoader::new()
            .override_global(GLOBAL_DAEMON_TGID, &tgid, true)
            .override_global(GLOBAL_WATCH_MODE, &watch_mode, true)
            .override_global(GLOBAL_DEDUP_WINDOW_NS, &dedup_ns, true)
            .override_global(GLOBAL_OFFSETS, &layout.offsets, true)
            .override_global(GLOBAL_KERNEL_TYPES, &layout.types, true)
            .override_global(GLOBAL_READ_PREFILTER, &prefilter, true)
            .map_max_entries(MAP_EVENTS, config.ring_buffer_bytes)
            .load(object.bytes())
            .map_err(SensorError::Object)?;
        let mut sensors = Self {
            ebpf,
            cgroup2,
            set,
            hooks: Vec::new(),
            links: Vec::new(),
            watch: config.watch,
            watch_layout: cgroup::WatchLayout::default(),
            generation: 0,
            path_classes: PathClasses::new(config),
        };
        sensors.fill_path_classes(config)?;
        sensors.refresh_watch_roots()?;
        sensors.load_programs()?;
        sensors.attach()?;
        info!(
            programs = ?sensors.attached(),
            cgroup2 = %sensors.cgroup2.display(),
            watch = ?config.watch,
            "eBPF programs attached (BTF and raw tracepoints, cgroup hooks; tracefs not needed)"
        );
        Ok(sensors)
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

    /// Runs and total run time of each attached program, as the kernel counts them while
    /// run-time statistics are enabled (`aya::sys::enable_stats`, or the
    /// `kernel.bpf_stats_enabled` sysctl); zero otherwise.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        self.attached()
            .into_iter()
            .filter_map(|name| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some(ProgramStats {
                    name,
                    runs: info.run_count(),
                    run_time: info.run_time(),
                })
            })
            .collect()
    }

    /// Loads the programs of the set, verifier included; attaches nothing.
    fn load_programs(&mut self) -> Result<(), SensorError> {
        let btf = Btf::from_sys_fs().map_err(SensorError::KernelBtf)?;
        let (btf_tracepoints, tracepoints): (&[_], &[_]) = match self.set {
            ProgramSet::Sensors => (&SENSOR_BTF_TRACEPOINTS, &SENSOR_TRACEPOINTS),
            ProgramSet::Noop => (&NOOP_BTF_TRACEPOINTS, &NOOP_TRACEPOINTS),
        };
        // In attach order. The exit program counts every thread exit, which `sys_exit`'s
        // cache of the current task relies on: it is attached first and detached last.
        for &(name, tracepoint) in tracepoints {
            let program: &mut RawTracePoint = self.program(name)?;
            program.load().map_err(program_error(name, "load"))?;
            self.hooks.push(Hook::RawTracePoint(name, tracepoint));
        }
        for &(name, tracepoint) in btf_tracepoints {
            let program: &mut BtfTracePoint = self.program(name)?;
            program
                .load(tracepoint, &btf)
                .map_err(program_error(name, "load"))?;
            self.hooks.push(Hook::BtfTracePoint(name));
        }
        if self.set == ProgramSet::Sensors {
            self.load_path_op_programs(&btf)?;
            for name in ["connect4", "connect6"] {
                let program: &mut CgroupSockAddr = self.program(name)?;
                program.load().map_err(program_error(name, "load"))?;
                self.hooks.push(Hook::CgroupSockAddr(name));
            }
            for (name, direction) in [
                ("egress", CgroupSkbAttachType::Egress),
                ("ingress", CgroupSkbAttachType::Ingress),
            ] {
                let program: &mut CgroupSkb = self.program(name)?;
                program.load().map_err(program_error(name, "load"))?;
                self.hooks.push(Hook::CgroupSkb(name, direction));
            }
        }
        // How close each program came to the verifier's limit of 1,000,000 instructions.
        for (name, program) in self.ebpf.programs() {
            if let Ok(info) = program.info() {
                debug!(
                    program = name,
                    verified_instructions = info.verified_instruction_count(),
                    "loaded"
                );
            }
        }
        Ok(())
    }

    /// Loads the programs `sys_exit` tail-calls for unlink, chmod and rename and puts them in
    /// their slots of [`MAP_PATH_OPS`]. They run on `sys_exit` with its context and are never
    /// attached themselves. The map stays open with the object: the kernel empties a program
    /// array when user space closes its last descriptor.
    fn load_path_op_programs(&mut self, btf: &Btf) -> Result<(), SensorError> {
        for (slot, name) in (0u32..).zip(PATH_OP_PROGRAMS) {
            let program: &mut BtfTracePoint = self.program(name)?;
            program
                .load("sys_exit", btf)
                .map_err(program_error(name, "load"))?;
            let fd = program
                .fd()
                .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
                .map_err(program_error(name, "load"))?;
            let mut array: ProgramArray<_> = ProgramArray::try_from(self.map_mut(MAP_PATH_OPS)?)
                .map_err(map_error(MAP_PATH_OPS))?;
            array.set(slot, &fd, 0).map_err(map_error(MAP_PATH_OPS))?;
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
        for hook in self.hooks.clone() {
            let link = match hook {
                Hook::BtfTracePoint(name) => {
                    let program: &mut BtfTracePoint = self.program(name)?;
                    Link::BtfTracePoint(
                        name,
                        program.attach().map_err(program_error(name, "attach"))?,
                    )
                }
                Hook::RawTracePoint(name, tracepoint) => {
                    let program: &mut RawTracePoint = self.program(name)?;
                    Link::RawTracePoint(
                        name,
                        program
                            .attach(tracepoint)
                            .map_err(program_error(name, "attach"))?,
                    )
                }
                Hook::CgroupSockAddr(name) => {
                    let program: &mut CgroupSockAddr = self.program(name)?;
                    Link::CgroupSockAddr(
                        name,
                        program
                            .attach(&root, CgroupAttachMode::Single)
                            .map_err(program_error(name, "attach"))?,
                    )
                }
                Hook::CgroupSkb(name, direction) => {
                    let program: &mut CgroupSkb = self.program(name)?;
                    Link::CgroupSkb(
                        name,
                        program
                            .attach(&root, direction, CgroupAttachMode::Single)
                            .map_err(program_error(name, "attach"))?,
                    )
                }
            };
            self.links.push(link);
        }
        Ok(())
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
    /// switch the sensors on and off between short stretches of a workload.
    pub fn detach(&mut self) -> Result<(), SensorError> {
        while let Some(link) = self.links.pop() {
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
        Ok(())
    }

    fn program<'a, T>(&'a mut self, name: &'static str) -> Result<&'a mut T, SensorError>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(SensorError::MissingProgram(name))?;
        program.try_into().map_err(program_error(name, "load"))
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

/// The LPM entries for the configured paths: `(prefix bytes, class bits)`.
///
/// A path entry `P` becomes `P\0` (the path itself) and `P/` (everything below it); an entry
/// ending in `*` becomes its bare prefix. Since the kernel returns only the longest match, each
/// entry also carries the bits of every shorter entry that is a prefix of it: a write to
/// `/etc/shadow` is both read-sensitive and a sensitive write. Read-sensitive patterns
/// (`/home/*/.ssh`) are not prefixes: the prefilter decides them ([`read_prefilter`]).
pub fn path_class_entries(config: &SensorsConfig) -> Vec<(Vec<u8>, u32)> {
    let mut own: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
    let lists = [
        (&config.sensitive_write_paths, path_class::SENSITIVE_WRITE),
        (&config.read_sensitive_paths, path_class::READ_SENSITIVE),
        (&config.log_paths, path_class::LOG),
        (&config.excluded_paths, path_class::EXCLUDED),
    ];
    for (list, class) in lists {
        for entry in list.iter().filter(|entry| !is_pattern(entry)) {
            if let Some(prefix) = entry.strip_suffix('*') {
                *own.entry(prefix.as_bytes().to_vec()).or_default() |= class;
                continue;
            }
            let path = entry.trim_end_matches('/');
            let mut exact = path.as_bytes().to_vec();
            exact.push(0);
            *own.entry(exact).or_default() |= class;
            let mut below = path.as_bytes().to_vec();
            below.push(b'/');
            *own.entry(below).or_default() |= class;
        }
    }
    own.iter()
        .map(|(key, &class)| {
            let inherited = own
                .iter()
                .filter(|(other, _)| other.len() < key.len() && key.starts_with(other))
                .fold(class, |acc, (_, &c)| acc | c);
            (key.clone(), inherited)
        })
        .collect()
}

/// The prefilter for read-only opens: the top [`TOP_COMPONENTS`] components of every
/// read-sensitive entry (`/var/run/secrets`: `var`, `run`, `secrets`), and for a deeper
/// pattern the file's own name; a pattern's entry decides. Too many distinct
/// entries disable it (every read-only open is then classified, and patterns never match).
pub fn read_prefilter(read_sensitive: &[String]) -> ReadPrefilter {
    let mut entries: Vec<TopComponents> = Vec::new();
    for entry in read_sensitive {
        let pattern = is_pattern(entry);
        let (bare, prefix) = match entry.strip_suffix('*') {
            Some(bare) if !pattern => (bare, true),
            _ => (entry.trim_end_matches('/'), false),
        };
        let components: Vec<&str> = bare.split('/').skip(1).collect();
        let word = |i: usize| match components.get(i) {
            Some(&"*") | None => NameWord::default(),
            // The last component of a `*` entry is a prefix of the name, not the name.
            Some(name) => name_word(name, !(prefix && i + 1 == components.len())),
        };
        let mut top = TopComponents {
            words: std::array::from_fn(word),
            leaf: NameWord::default(),
            decides: u32::from(pattern),
            _pad: 0,
        };
        if pattern && components.len() > TOP_COMPONENTS {
            top.leaf = word(components.len() - 1);
        }
        if !entries.contains(&top) {
            entries.push(top);
        }
    }
    let mut filter = ReadPrefilter {
        len: ReadPrefilter::DISABLED,
        _pad: 0,
        first_exact: 0,
        first_prefix: 0,
        entries: [TopComponents::default(); READ_PREFILTER_SLOTS],
    };
    if entries.len() <= READ_PREFILTER_SLOTS {
        filter.len = entries.len() as u32;
        filter.entries[..entries.len()].copy_from_slice(&entries);
    }
    for entry in &entries {
        let first = &entry.words[0];
        let byte = first.value as u8;
        if first.mask == 0 {
            // Any first component.
            filter.first_prefix = u64::MAX;
        } else if first.len == 0 {
            filter.first_prefix |= 1 << ReadPrefilter::prefix_bit(byte);
        } else {
            filter.first_exact |= 1 << ReadPrefilter::exact_bit(byte, first.len);
        }
    }
    filter
}

/// A component's first eight bytes; an `exact` one also fixes the length.
fn name_word(name: &str, exact: bool) -> NameWord {
    let n = name.len().min(8);
    let mut value = [0u8; 8];
    let mut mask = [0u8; 8];
    value[..n].copy_from_slice(&name.as_bytes()[..n]);
    mask[..n].fill(0xff);
    NameWord {
        value: u64::from_ne_bytes(value),
        mask: u64::from_ne_bytes(mask),
        len: if exact { name.len() as u32 } else { 0 },
        _pad: 0,
    }
}

/// The eBPF object with its kernel-function calls in place, 8-byte aligned for the ELF parser.
struct PatchedObject {
    words: Vec<u64>,
    len: usize,
}

impl PatchedObject {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `words` owns at least `len` initialized bytes; `u8` has no alignment needs.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

/// A copy of `object` where every placeholder helper call to [`KFUNC_RDONLY_CAST_MARKER`] in a
/// code section is a call of the kernel function with BTF id `rdonly_cast` (source register
/// `BPF_PSEUDO_KFUNC_CALL`, in the kernel's own BTF). Rust has no syntax for such a call; the
/// programs emit the placeholder with inline assembly (`detector-ebpf/src/kernel.rs`).
fn with_kfunc_calls(object: &[u8], rdonly_cast: u32) -> Result<PatchedObject, SensorError> {
    use object::read::{Object as _, ObjectSection as _, SectionKind};

    const BPF_JMP_CALL: u8 = 0x85;
    const BPF_PSEUDO_KFUNC_CALL: u8 = 2;
    let marker = {
        let mut insn = [BPF_JMP_CALL, 0, 0, 0, 0, 0, 0, 0];
        insn[4..].copy_from_slice(&KFUNC_RDONLY_CAST_MARKER.to_le_bytes());
        insn
    };
    let elf = object::File::parse(object).map_err(SensorError::ObjectFormat)?;
    let mut words = vec![0u64; object.len().div_ceil(8)];
    // SAFETY: the buffer holds `words.len() * 8 >= object.len()` bytes.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), object.len()) };
    bytes.copy_from_slice(object);
    for section in elf.sections().filter(|s| s.kind() == SectionKind::Text) {
        let Some((start, size)) = section.file_range() else {
            continue;
        };
        let code = &mut bytes[start as usize..(start + size) as usize];
        for insn in code.chunks_exact_mut(8).filter(|insn| **insn == marker) {
            // Destination register 0 in the low nibble, source register in the high one.
            insn[1] = BPF_PSEUDO_KFUNC_CALL << 4;
            insn[4..].copy_from_slice(&rdonly_cast.to_le_bytes());
        }
    }
    Ok(PatchedObject {
        words,
        len: object.len(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(entries: &[(Vec<u8>, u32)], path: &str) -> u32 {
        // The kernel's longest-prefix match over the path bytes and its NUL.
        let mut bytes = path.as_bytes().to_vec();
        bytes.push(0);
        entries
            .iter()
            .filter(|(prefix, _)| bytes.starts_with(prefix))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(0, |(_, class)| *class)
    }

    #[test]
    fn kernel_function_calls_are_placed_in_code_and_nowhere_else() {
        let marker = {
            let mut insn = [0x85u8, 0, 0, 0, 0, 0, 0, 0];
            insn[4..].copy_from_slice(&KFUNC_RDONLY_CAST_MARKER.to_le_bytes());
            insn
        };
        let count =
            |bytes: &[u8], pattern: &[u8]| bytes.windows(8).filter(|w| *w == pattern).count();
        assert!(
            count(EBPF_OBJECT, &marker) > 0,
            "the programs emit the placeholder"
        );
        let patched = with_kfunc_calls(EBPF_OBJECT, 0x0102_0304).unwrap();
        let bytes = patched.bytes();
        assert_eq!(bytes.len(), EBPF_OBJECT.len());
        assert_eq!(bytes.as_ptr() as usize % 8, 0);
        assert_eq!(count(bytes, &marker), 0);
        let call = [0x85u8, 0x20, 0, 0, 4, 3, 2, 1];
        assert_eq!(count(bytes, &call), count(EBPF_OBJECT, &marker));
        let changed = bytes
            .iter()
            .zip(EBPF_OBJECT)
            .filter(|(a, b)| a != b)
            .count();
        assert!(changed <= 5 * count(EBPF_OBJECT, &marker));
        assert!(matches!(
            with_kfunc_calls(b"not an object", 1),
            Err(SensorError::ObjectFormat(_))
        ));
    }

    #[test]
    fn default_path_classes() {
        let entries = path_class_entries(&SensorsConfig::default());
        use path_class::*;
        assert_eq!(class_of(&entries, "/etc/passwd"), SENSITIVE_WRITE);
        assert_eq!(class_of(&entries, "/etc"), SENSITIVE_WRITE);
        assert_eq!(class_of(&entries, "/etcetera"), 0);
        assert_eq!(
            class_of(&entries, "/etc/shadow"),
            SENSITIVE_WRITE | READ_SENSITIVE
        );
        assert_eq!(
            class_of(&entries, "/var/run/secrets/kubernetes.io/token"),
            READ_SENSITIVE
        );
        assert_eq!(class_of(&entries, "/dev/shm/x"), SENSITIVE_WRITE);
        assert_ne!(class_of(&entries, "/dev/null") & EXCLUDED, 0);
        assert_ne!(class_of(&entries, "/dev/tty1") & EXCLUDED, 0);
        assert_ne!(class_of(&entries, "/dev/pts/3") & EXCLUDED, 0);
        assert_eq!(class_of(&entries, "/dev/nullx"), SENSITIVE_WRITE);
        assert_eq!(class_of(&entries, "/tmp/file"), 0);
        assert!(entries.iter().all(|(k, _)| k.len() < PATH_CLASS_KEY_BYTES));
    }

    /// What the kernel's prefilter (`prefilter` in `detector-ebpf/src/path.rs`) says of an
    /// absolute path: `None` turned away, `Some(false)` let through for the exact lookup,
    /// `Some(true)` decided read-sensitive by a pattern.
    fn prefilter_says(filter: &ReadPrefilter, path: &str) -> Option<bool> {
        let components: Vec<&str> = path.split('/').skip(1).filter(|c| !c.is_empty()).collect();
        let name = |c: Option<&&str>| {
            let c = c.copied().unwrap_or("");
            let mut bytes = [0u8; 8];
            let n = c.len().min(8);
            bytes[..n].copy_from_slice(&c.as_bytes()[..n]);
            (u64::from_ne_bytes(bytes), c.len() as u32)
        };
        let top: [(u64, u32); TOP_COMPONENTS] = std::array::from_fn(|i| name(components.get(i)));
        let leaf = name(components.last());
        let first = top[0];
        let exact = filter.first_exact >> ReadPrefilter::exact_bit(first.0 as u8, first.1) & 1;
        let prefix = filter.first_prefix >> ReadPrefilter::prefix_bit(first.0 as u8) & 1;
        if exact | prefix == 0 {
            return None;
        }
        let matches = |(word, len): (u64, u32), want: &NameWord| {
            word & want.mask == want.value && (want.len == 0 || want.len == len)
        };
        let mut may = None;
        for entry in &filter.entries[..filter.len as usize] {
            if top.iter().zip(&entry.words).all(|(&n, w)| matches(n, w))
                && matches(leaf, &entry.leaf)
            {
                if entry.decides != 0 {
                    return Some(true);
                }
                may = Some(false);
            }
        }
        may
    }

    fn passes(filter: &ReadPrefilter, path: &str) -> bool {
        prefilter_says(filter, path).is_some()
    }

    #[test]
    fn read_sensitive_patterns_are_decided_by_the_prefilter_alone() {
        let config = SensorsConfig::default();
        let entries = path_class_entries(&config);
        let filter = read_prefilter(&config.read_sensitive_paths);
        assert!(
            filter.len as usize <= READ_PREFILTER_SLOTS,
            "{}",
            filter.len
        );
        for path in [
            "/proc/1/environ",
            "/proc/self/environ",
            "/proc/1/task/1/environ",
            "/home/app/.ssh/id_ed25519",
            "/home/app/.ssh",
            "/home/app/.aws/credentials",
            "/home/u/.azure/accessTokens.json",
            "/home/u/.kube/config",
        ] {
            assert_eq!(prefilter_says(&filter, path), Some(true), "{path}");
            // Never in the prefix trie: only the prefilter knows patterns.
            assert_eq!(
                class_of(&entries, path) & path_class::READ_SENSITIVE,
                0,
                "{path}"
            );
        }
        for path in [
            "/proc/1/stat",
            "/proc/self/status",
            "/proc/1/task/1/stat",
            "/home/app/server.js",
            "/home/app/.config/app.json",
            "/home/app",
            "/home/app/.sshx",
        ] {
            assert_ne!(prefilter_says(&filter, path), Some(true), "{path}");
            assert_eq!(
                class_of(&entries, path) & path_class::READ_SENSITIVE,
                0,
                "{path}"
            );
        }
        for path in [
            "/root/.aws/credentials",
            "/root/.config/gcloud/x",
            "/root/.kube/config",
        ] {
            assert_eq!(prefilter_says(&filter, path), Some(false), "{path}");
            assert_ne!(
                class_of(&entries, path) & path_class::READ_SENSITIVE,
                0,
                "{path}"
            );
        }
    }

    #[test]
    fn log_paths_are_classed_as_logs_and_patterns_stay_out_of_the_trie() {
        let config = SensorsConfig::default();
        let entries = path_class_entries(&config);
        assert_ne!(class_of(&entries, "/var/log/app.log") & path_class::LOG, 0);
        assert_ne!(class_of(&entries, "/var/log") & path_class::LOG, 0);
        assert_eq!(class_of(&entries, "/var/logs/x") & path_class::LOG, 0);
        assert!(entries.iter().all(|(key, _)| !key.contains(&b'*')));
    }

    #[test]
    fn read_prefilter_lets_every_read_sensitive_path_through_and_little_else() {
        let config = SensorsConfig::default();
        let entries = path_class_entries(&config);
        let filter = read_prefilter(&config.read_sensitive_paths);
        assert!(filter.len as usize <= READ_PREFILTER_SLOTS);
        for path in [
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "/run/secrets/x",
            "/root/.ssh/id_rsa",
            "/root/.ssh",
            "/etc/shadow",
            "/etc/sudoers",
            "/etc/kubernetes/admin.conf",
            "/var/lib/kubelet/pki",
        ] {
            assert!(passes(&filter, path), "{path}");
            assert_ne!(
                class_of(&entries, path) & path_class::READ_SENSITIVE,
                0,
                "{path}"
            );
        }
        for path in [
            "/tmp/file",
            "/usr/lib/libc.so.6",
            "/home/a",
            "/etc/ld.so.cache",
            "/etc/passwd",
            "/etc/shadowy",
            "/var/log/syslog",
            "/root/.bashrc",
            "/proc/self/stat",
            "/",
        ] {
            assert!(!passes(&filter, path), "{path}");
        }
    }

    #[test]
    fn read_prefilter_entries_with_a_star_match_prefixes_of_names() {
        let entries = [
            "/etc/shad*".to_owned(),
            "/opt/*".to_owned(),
            "/sec*".to_owned(),
        ];
        let filter = read_prefilter(&entries);
        assert_eq!(filter.len, 3);
        for path in ["/etc/shadow", "/etc/shad", "/opt/x/y", "/secrets", "/sec"] {
            assert!(passes(&filter, path), "{path}");
        }
        for path in ["/etc/sha", "/se", "/etc/passwd", "/op"] {
            assert!(!passes(&filter, path), "{path}");
        }
    }

    #[test]
    fn long_components_are_compared_by_their_first_bytes_and_length() {
        let filter = read_prefilter(&["/etc/kubernetes".to_owned()]);
        assert!(passes(&filter, "/etc/kubernetes/pki"));
        assert!(!passes(&filter, "/etc/kubernetesX"));
        // Same first eight bytes and length: let through, the exact lookup decides.
        assert!(passes(&filter, "/etc/kubernetez"));
    }

    #[test]
    fn an_entry_for_everything_lets_every_path_through() {
        let filter = read_prefilter(&["/*".to_owned()]);
        for path in ["/tmp/x", "/", "/etc/passwd"] {
            assert!(passes(&filter, path), "{path}");
        }
    }

    #[test]
    fn too_many_read_sensitive_prefixes_disable_the_prefilter() {
        let paths: Vec<String> = (0..40).map(|i| format!("/s{i:02}")).collect();
        assert_eq!(read_prefilter(&paths).len, ReadPrefilter::DISABLED);
    }

    #[test]
    fn no_read_sensitive_prefix_means_no_look_at_read_only_opens() {
        // The kernel leaves read-only opens before the current task is even looked up when
        // `len` is 0.
        assert_eq!(read_prefilter(&[]).len, 0);
    }
}
