//! Maps, globals and helpers shared by every program.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_task,
            bpf_ktime_get_boot_ns,
        },
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use detector_common::{
    EventHeader, EventKind, KernelOffsets, QUARANTINE_MAX_ENTRIES, STAT_COUNT, Stat,
    WATCH_KNOWN_MAX, WATCH_MAX_DEPTH, WATCH_ROOT_MAX_LEVEL, WatchDecision, WatchMode, header_flags,
};

/// Bytes waiting in [`EVENTS`] from which a record wakes the reader; 0 wakes it every time.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;

/// The submit flags of a record: a wakeup only once enough is waiting. A wakeup for every record
/// cost a context switch of the reader per event (on two CPUs, most of what an exec loop paid
/// for the sensors); the reader drains on its own tick too, so nothing waits long.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    let threshold = global(&WAKEUP_BYTES);
    if threshold == 0 {
        0
    } else if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= threshold {
        u64::from(BPF_RB_FORCE_WAKEUP)
    } else {
        u64::from(BPF_RB_NO_WAKEUP)
    }
}

/// Every record goes through this ring buffer; its size is set by user space at load.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Per-CPU counters indexed by [`Stat`].
#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Cgroup ids whose descendants are watched in `containers` mode.
#[map(name = "WATCH_ROOTS")]
static WATCH_ROOTS: HashMap<u64, u32> = HashMap::with_max_entries(1024, 0);

/// The node's own cgroups at the levels where container roots live (see `MAP_WATCH_KNOWN`).
#[map(name = "WATCH_KNOWN")]
static WATCH_KNOWN: HashMap<u64, u32> = HashMap::with_max_entries(WATCH_KNOWN_MAX, 0);

/// Watch decision per cgroup id, so the ancestor walk runs once per cgroup and generation.
#[map(name = "WATCH_CACHE")]
static WATCH_CACHE: LruHashMap<u64, WatchDecision> = LruHashMap::with_max_entries(16384, 0);

/// Bumped by user space when `WATCH_ROOTS` changes.
#[map(name = "WATCH_GENERATION")]
static WATCH_GENERATION: Array<u32> = Array::with_max_entries(1, 0);

/// Cgroups under network quarantine (see `detector_common::MAP_QUARANTINE`).
#[map(name = "QUARANTINE")]
static QUARANTINE: HashMap<u64, u32> = HashMap::with_max_entries(QUARANTINE_MAX_ENTRIES, 0);

/// Number of quarantined cgroups; zero lets every program skip the lookups.
#[map(name = "QUARANTINE_ACTIVE")]
static QUARANTINE_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// Tgid of the daemon; its own activity is never reported.
#[unsafe(no_mangle)]
static DAEMON_TGID: u32 = 0;

/// A [`WatchMode`] as `u32`.
#[unsafe(no_mangle)]
static WATCH_MODE: u32 = 0;

/// Kernel structure offsets from BTF; read them with [`offset!`].
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets {
    task_real_parent: 0,
    task_tgid: 0,
    task_mm: 0,
    task_exit_code: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    bprm_filename: 0,
    task_files: 0,
    task_fs: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    files_fdt: 0,
    fdtable_max_fds: 0,
    fdtable_fd: 0,
    file_path: 0,
    fs_root: 0,
    fs_pwd: 0,
    path_mnt: 0,
    path_dentry: 0,
    dentry_parent: 0,
    dentry_name: 0,
    dentry_inline_name: 0,
    qstr_len: 0,
    qstr_name: 0,
    vfsmount_root: 0,
    vfsmount_flags: 0,
    mount_mnt: 0,
    mount_parent: 0,
    mount_mountpoint: 0,
    task_group_leader: 0,
    task_thread_pid: 0,
    pid_level: 0,
    pid_numbers: 0,
    upid_size: 0,
    upid_nr: 0,
    task_signal: 0,
    signal_tty: 0,
    bprm_file: 0,
    file_inode: 0,
    inode_mode: 0,
    inode_nlink: 0,
    file_private_data: 0,
    socket_sk: 0,
    sock_family: 0,
    dentry_inline_len: 0,
};

/// One member of [`OFFSETS`]. Read alone (volatile, so the placeholder is not folded in), it
/// is a constant to the verifier, which then checks typed loads at that offset against BTF.
macro_rules! offset {
    ($member:ident) => {
        // SAFETY: a member of a global set at load time.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!($crate::common::OFFSETS.$member)) }
    };
}
pub(crate) use offset;

/// The last watch decision taken on this CPU: tasks of one cgroup tend to run back to back,
/// and an array slot is read without a helper call.
#[map(name = "LAST_WATCH")]
static LAST_WATCH: PerCpuArray<LastWatch> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
struct LastWatch {
    cgroup_id: u64,
    generation: u32,
    watched: u32,
}

/// Reads a global set by user space at load time. The volatile read keeps the compiler from
/// folding the placeholder value in; the verifier then sees the real value as a constant.
#[inline(always)]
fn global<T: Copy>(value: &'static T) -> T {
    // SAFETY: `value` is a valid, aligned static.
    unsafe { core::ptr::read_volatile(value) }
}

/// Adds one to a counter.
#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: the pointer comes from a per-CPU array lookup and is only touched on this CPU.
        unsafe { *counter += 1 };
    }
}

/// Counts a record of `kind` lost to a full ring buffer.
#[inline(always)]
pub fn count_lost(kind: EventKind) {
    count(Stat::lost(kind));
}

/// The current thread-group id.
#[inline(always)]
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// True for the daemon's own threads.
#[inline(always)]
pub fn is_daemon(tgid: u32) -> bool {
    tgid == global(&DAEMON_TGID)
}

/// Whether every cgroup is watched (`watch: all`).
#[inline(always)]
pub fn watching_all() -> bool {
    global(&WATCH_MODE) == WatchMode::All as u32
}

/// Whether the current task's cgroup is watched.
#[inline(always)]
pub fn current_cgroup_watched() -> bool {
    // SAFETY: a helper without arguments.
    watching_all() || cgroup_watched(unsafe { bpf_get_current_cgroup_id() })
}

/// Whether `cgroup_id`, the current task's cgroup, is watched.
#[inline(always)]
pub fn cgroup_watched(cgroup_id: u64) -> bool {
    if watching_all() {
        return true;
    }
    let generation = WATCH_GENERATION.get(0).copied().unwrap_or(0);
    let last = LAST_WATCH.get_ptr_mut(0);
    if let Some(last) = last {
        // SAFETY: this CPU's slot, used by one program run at a time.
        let last = unsafe { &*last };
        if last.cgroup_id == cgroup_id && last.generation == generation {
            return last.watched != 0;
        }
    }
    let watched = decide_watched(cgroup_id, generation);
    if let Some(last) = last {
        // SAFETY: as above.
        let last = unsafe { &mut *last };
        last.cgroup_id = cgroup_id;
        last.generation = generation;
        last.watched = watched as u32;
    }
    watched
}

/// The watch decision from the LRU cache, or from the current task's ancestor cgroups.
#[inline(always)]
fn decide_watched(cgroup_id: u64, generation: u32) -> bool {
    // SAFETY: the value is copied out at once; a concurrent update only changes the decision.
    if let Some(decision) = unsafe { WATCH_CACHE.get(cgroup_id) }
        && decision.generation == generation
    {
        return decision.watched != 0;
    }
    let mut watched = 0;
    // Level 0 is the cgroup2 root, never a watch root.
    for level in 1..=WATCH_MAX_DEPTH {
        // SAFETY: a helper taking a plain integer.
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if ancestor == 0 {
            break;
        }
        // SAFETY: only existence is tested.
        if unsafe { WATCH_ROOTS.get(ancestor) }.is_some() {
            watched = 1;
            break;
        }
        // A cgroup where roots live that user space has not classified yet is new: watched
        // until it is (a runtime's new root, or a node unit for a second).
        // SAFETY: as above.
        if level <= WATCH_ROOT_MAX_LEVEL && unsafe { WATCH_KNOWN.get(ancestor) }.is_none() {
            watched = 1;
            break;
        }
        // A root may be the task's own cgroup (a runtime's `docker-<id>.scope`), so the task's
        // level is tested before the walk stops.
        if ancestor == cgroup_id {
            break;
        }
    }
    let decision = WatchDecision {
        watched,
        generation,
    };
    // A failed insert only costs another walk next time.
    let _ = WATCH_CACHE.insert(cgroup_id, decision, 0);
    watched != 0
}

/// Whether `cgroup_id` or one of its ancestors, as given by `ancestor(level)`, is quarantined.
/// Costs one array lookup while nothing is quarantined.
#[inline(always)]
pub fn quarantined(cgroup_id: u64, ancestor: impl Fn(i32) -> u64) -> bool {
    if QUARANTINE_ACTIVE.get(0).copied().unwrap_or(0) == 0 {
        return false;
    }
    // SAFETY: only existence is tested.
    if unsafe { QUARANTINE.get(cgroup_id) }.is_some() {
        return true;
    }
    for level in 1..=WATCH_MAX_DEPTH {
        let id = ancestor(level as i32);
        if id == 0 || id == cgroup_id {
            break;
        }
        // SAFETY: only existence is tested.
        if unsafe { QUARANTINE.get(id) }.is_some() {
            return true;
        }
    }
    false
}

/// Whether the current task's cgroup is quarantined.
#[inline(always)]
pub fn current_quarantined() -> bool {
    // SAFETY: helpers taking plain integers.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    quarantined(cgroup_id, |level| unsafe {
        bpf_get_current_ancestor_cgroup_id(level)
    })
}

/// Fills `header` for the current task.
#[inline(always)]
pub fn fill_header(header: &mut EventHeader, kind: EventKind) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    header.kind = kind as u32;
    header.flags = 0;
    // SAFETY: helpers without arguments.
    header.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: as above.
    header.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    header.pid = pid_tgid as u32;
    header.tgid = (pid_tgid >> 32) as u32;
    header.uid = uid_gid as u32;
    header.gid = (uid_gid >> 32) as u32;
    header.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let task = current_task();
    match parent_tgid(task) {
        Some(ppid) => header.ppid = ppid,
        None => {
            header.ppid = 0;
            header.flags |= header_flags::PPID_UNKNOWN;
        }
    }
    header.ns_tgid = ns_tgid(task).unwrap_or(0);
}

/// `current`, as an untyped pointer that is only read through probe reads.
#[inline(always)]
pub fn current_task() -> *const u8 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_get_current_task() as *const u8 }
}

/// The deepest pid namespaces nest (`MAX_PID_NS_LEVEL` is 32).
const MAX_PID_NS_LEVEL: u32 = 32;

/// `current->group_leader->thread_pid->numbers[level].nr`: the process's id in its own pid
/// namespace, as `task_tgid_vnr` computes it.
#[inline(always)]
fn ns_tgid(task: *const u8) -> Option<u32> {
    let leader_at = offset!(task_group_leader) as usize;
    if leader_at == 0 {
        return None;
    }
    let thread_pid_at = offset!(task_thread_pid) as usize;
    let level_at = offset!(pid_level) as usize;
    let (numbers_at, upid_size, nr_at) = (
        offset!(pid_numbers) as usize,
        offset!(upid_size) as usize,
        offset!(upid_nr) as usize,
    );
    // SAFETY: probe reads tolerate any address; a bad one returns an error.
    unsafe {
        let leader: *const u8 = bpf_probe_read_kernel(task.add(leader_at).cast()).ok()?;
        let pid: *const u8 = bpf_probe_read_kernel(leader.add(thread_pid_at).cast()).ok()?;
        let level: u32 = bpf_probe_read_kernel(pid.add(level_at).cast()).ok()?;
        if level >= MAX_PID_NS_LEVEL {
            return None;
        }
        let at = numbers_at + level as usize * upid_size + nr_at;
        bpf_probe_read_kernel::<u32>(pid.add(at).cast()).ok()
    }
}

/// `current->real_parent->tgid`, through the offsets read from BTF.
#[inline(always)]
fn parent_tgid(task: *const u8) -> Option<u32> {
    let real_parent = offset!(task_real_parent);
    if real_parent == 0 {
        return None;
    }
    // SAFETY: probe reads tolerate any address; a bad one returns an error.
    let parent: *const u8 =
        unsafe { bpf_probe_read_kernel(task.add(real_parent as usize).cast()) }.ok()?;
    let tgid_at = offset!(task_tgid) as usize;
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel::<u32>(parent.add(tgid_at).cast()) }.ok()
}
