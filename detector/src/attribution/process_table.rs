//! The process table: who is whose parent and what each runs, from exec and exit events plus a
//! `/proc` scan at start-up, so that every event can carry the chain of parent executables.
//!
//! Exited processes are kept for a grace period (events of a process can arrive after its exit
//! event, and its children's events still need it as an ancestor), then evicted.
//!
//! Each entry also keeps the process's real uid as of its last event (or its exec, or the
//! scan; a child forked without exec starts with its parent's), so that a setuid event can say
//! whether the caller was root before the call ([`ProcessTable::swap_uid`]).
//!
//! Memory bound: at most `capacity` entries of [`ENTRY_BYTES`] each plus the executable paths,
//! which are interned (one copy per distinct path, each at most [`MAX_EXE_BYTES`]). With the
//! default capacity of 65,536 that is at most about 6 MiB of entries plus the distinct paths;
//! 250 pods x 50 processes measure at about 0.6 MiB (see the
//! `memory_for_250_pods_of_50_processes` test).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use super::lineage::{self, Place, Sessions};
use crate::event::{Ancestor, Lineage, Role};

/// Longest executable path kept; longer ones are cut at a character boundary.
pub const MAX_EXE_BYTES: usize = 256;
/// Approximate bytes of one entry in the table's maps.
pub const ENTRY_BYTES: usize =
    size_of::<u32>() + size_of::<Process>() + 8 + size_of::<(Instant, u32)>();

/// One process.
#[derive(Debug, Clone)]
struct Process {
    ppid: u32,
    exe: Arc<str>,
    exited_at: Option<Instant>,
    /// The cgroup it was last seen in (0: unknown).
    cgroup: u64,
    /// Its role in its container, `None` outside containers.
    role: Option<Role>,
    /// It had a controlling terminal at its last exec (or its parent's, when forked).
    tty: bool,
    /// The runtime started it (see [`Lineage::leader`]).
    leader: bool,
    /// Its real uid as of its last event, `None` until one said.
    uid: Option<u32>,
}

impl Process {
    fn lineage(&self) -> Option<Lineage> {
        self.role.map(|role| Lineage {
            role,
            tty: self.tty,
            leader: self.leader,
        })
    }
}

/// Limits of a [`ProcessTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessLimits {
    /// Entries at most; when full, exited entries are evicted early and then new processes are
    /// not recorded (counted in [`ProcessTable::dropped`]).
    pub capacity: usize,
    /// How long exited processes stay.
    pub exited_grace: Duration,
    /// Ancestors per event at most.
    pub max_depth: usize,
}

impl Default for ProcessLimits {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            exited_grace: Duration::from_secs(5),
            max_depth: 8,
        }
    }
}

/// The process table.
#[derive(Debug)]
pub struct ProcessTable {
    limits: ProcessLimits,
    processes: HashMap<u32, Process>,
    exited: VecDeque<(Instant, u32)>,
    exes: HashSet<Arc<str>>,
    sessions: Sessions,
    dropped: u64,
}

impl ProcessTable {
    /// An empty table.
    pub fn new(limits: ProcessLimits) -> Self {
        Self {
            limits,
            processes: HashMap::new(),
            exited: VecDeque::new(),
            exes: HashSet::new(),
            sessions: Sessions::new(limits.capacity),
            dropped: 0,
        }
    }

    /// Processes in the table, exited ones included.
    pub fn len(&self) -> usize {
        self.processes.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }

    /// Processes not recorded because the table was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Records a process of the node found by the start-up scan, or an exec outside any
    /// container: `pid` now runs `exe`.
    pub fn exec(&mut self, pid: u32, ppid: u32, exe: &str) {
        self.exec_at(pid, ppid, exe, &Place::default(), &[]);
    }

    /// Records an exec at `place`: `pid` now runs `exe` with `argv`. Returns the process's
    /// lineage when `place` is a container's (see [`lineage`]).
    pub fn exec_at(
        &mut self,
        pid: u32,
        ppid: u32,
        exe: &str,
        place: &Place,
        argv: &[String],
    ) -> Option<Lineage> {
        let (role, leader) = if place.container {
            let (role, leader) = self.role_at_exec(pid, ppid, exe, place, argv);
            (Some(role), leader)
        } else {
            (None, false)
        };
        let exe = self.intern(exe);
        // An exec keeps the real uid (a set-user-ID executable changes the effective one).
        let uid = self
            .processes
            .get(&pid)
            .filter(|p| p.exited_at.is_none())
            .or_else(|| self.processes.get(&ppid))
            .and_then(|p| p.uid);
        let process = Process {
            ppid,
            exe,
            exited_at: None,
            cgroup: place.cgroup,
            role,
            tty: place.tty,
            leader,
            uid,
        };
        let lineage = process.lineage();
        self.insert(pid, process);
        lineage
    }

    /// Records a process seen in any event. A process not in the table was forked after the
    /// scan without exec-ing: it runs its parent's executable (or, unknown, its command name).
    pub fn observe(&mut self, pid: u32, ppid: u32, comm: &str) {
        self.observe_at(pid, ppid, comm, &Place::default());
    }

    /// [`Self::observe`] at `place`; returns the process's lineage when `place` is a
    /// container's.
    pub fn observe_at(
        &mut self,
        pid: u32,
        ppid: u32,
        comm: &str,
        place: &Place,
    ) -> Option<Lineage> {
        if let Some(p) = self.processes.get_mut(&pid)
            && p.exited_at.is_none()
            && (p.cgroup == place.cgroup || !place.container || p.cgroup == 0)
        {
            // Reparented (its parent exited): same executable, new parent.
            p.ppid = ppid;
            if p.cgroup == 0 {
                p.cgroup = place.cgroup;
            }
            if place.container && p.role.is_none() {
                // A process the scan found before its container was known.
                p.role = Some(lineage::role_unseen(comm, None, Role::ExecSession));
            }
            return p.lineage();
        }
        // First seen here: forked without exec, or moved into this cgroup without exec. A fork
        // copies the parent's credentials: its uid is the parent's, as far as the table knows.
        let (exe, inherited, tty, uid) = match self.processes.get(&ppid) {
            Some(parent) => {
                // Only a live parent in the same cgroup hands its role down.
                let same = parent.exited_at.is_none() && parent.cgroup == place.cgroup;
                (
                    parent.exe.clone(),
                    parent.role.filter(|_| same),
                    same && parent.tty,
                    parent.uid,
                )
            }
            None => (self.intern(comm), None, false, None),
        };
        let role = place.container.then(|| {
            let unseen = self.sessions.unseen_parent_role(place.cgroup);
            lineage::role_unseen(comm, inherited, unseen)
        });
        let process = Process {
            ppid,
            exe,
            exited_at: None,
            cgroup: place.cgroup,
            role,
            tty,
            leader: false,
            uid,
        };
        let lineage = process.lineage();
        self.insert(pid, process);
        lineage
    }

    /// The role of `pid` exec-ing `exe` in a container's cgroup, and whether the runtime
    /// started it. A workload process stays one (a leader stays the leader), and a child forked
    /// from one inherits its role; anything else was started from outside the workload, by the
    /// runtime: its own binaries stay the runtime's, the first process is the container's main
    /// process, and later ones are exec sessions (probes when the same command keeps coming).
    fn role_at_exec(
        &mut self,
        pid: u32,
        ppid: u32,
        exe: &str,
        place: &Place,
        argv: &[String],
    ) -> (Role, bool) {
        let workload = |p: Option<&Process>| {
            p.filter(|p| p.exited_at.is_none() && p.cgroup == place.cgroup)
                .and_then(|p| Some((p.role.filter(|r| r.is_workload())?, p.leader)))
        };
        if let Some(same) = workload(self.processes.get(&pid)) {
            return same;
        }
        if let Some((role, _)) = workload(self.processes.get(&ppid)) {
            return (role, false);
        }
        let parent_seen_here = self
            .processes
            .get(&ppid)
            .is_some_and(|p| p.exited_at.is_none() && p.cgroup == place.cgroup);
        if place.parent_cgroup == Some(place.cgroup) && !parent_seen_here {
            // Forked inside the container by a process that made no event of its own (or
            // whose pid the table knows only from an earlier life).
            return (self.sessions.unseen_parent_role(place.cgroup), false);
        }
        let runtime_now = self
            .processes
            .get(&pid)
            .is_some_and(|p| p.exited_at.is_none() && p.role == Some(Role::Runtime));
        if lineage::is_runtime_exe(exe) || (runtime_now && lineage::is_runtime_reexec(argv)) {
            return (Role::Runtime, false);
        }
        let main_alive = self.sessions.main(place.cgroup).is_some_and(|main| {
            main != pid
                && self.processes.get(&main).is_some_and(|p| {
                    p.exited_at.is_none()
                        && p.cgroup == place.cgroup
                        && p.role == Some(Role::Entrypoint)
                })
        });
        let role = if place.ns_pid == Some(1) || !main_alive {
            self.sessions.set_main(place.cgroup, pid);
            Role::Entrypoint
        } else if self.sessions.started(place.cgroup, exe, argv) >= lineage::PROBE_REPEATS
            || place.probe
        {
            Role::Probe
        } else {
            self.sessions.session(place.cgroup, true);
            Role::ExecSession
        };
        (role, true)
    }

    /// Records a process the start-up scan found in a container, with the role the scan
    /// worked out from its place in the container's process tree.
    pub fn seed_in_container(&mut self, pid: u32, role: Role, leader: bool, place: &Place) {
        if role == Role::Entrypoint && leader {
            self.sessions.set_main(place.cgroup, pid);
        }
        if let Some(p) = self.processes.get_mut(&pid) {
            p.cgroup = place.cgroup;
            p.role = Some(role);
            p.tty = place.tty;
            p.leader = leader;
        }
    }

    /// Records an exit; the entry stays for the grace period.
    pub fn exit(&mut self, pid: u32, now: Instant) {
        if let Some(p) = self.processes.get_mut(&pid)
            && p.exited_at.is_none()
        {
            p.exited_at = Some(now);
            self.exited.push_back((now, pid));
            match (p.role, p.leader) {
                // The main process's exit ends its container.
                (Some(Role::Entrypoint), _) => self.sessions.end(p.cgroup, pid),
                (Some(Role::ExecSession), true) => self.sessions.session(p.cgroup, false),
                _ => {}
            }
        }
        self.evict(now);
    }

    /// The parent chain starting at `ppid`, nearest parent first, at most `max_depth` long.
    /// Stops at pid 0, at a process not in the table, and at a cycle.
    pub fn ancestry(&self, ppid: u32) -> Vec<Ancestor> {
        let mut chain = Vec::new();
        let mut pid = ppid;
        while pid != 0 && chain.len() < self.limits.max_depth {
            let Some(p) = self.processes.get(&pid) else {
                break;
            };
            if chain.iter().any(|a: &Ancestor| a.pid == pid) {
                break;
            }
            chain.push(Ancestor {
                pid,
                exe: p.exe.to_string(),
            });
            pid = p.ppid;
        }
        chain
    }

    /// Records `uid` as the real uid of `pid` (when it is in the table) and returns the one
    /// known before: as of its previous event, its exec, the scan, or its parent's when it was
    /// forked. Call it after recording the event's exec or observation.
    pub fn swap_uid(&mut self, pid: u32, uid: u32) -> Option<u32> {
        self.processes
            .get_mut(&pid)
            .and_then(|p| p.uid.replace(uid))
    }

    /// The real uid of a process as of its last event, if known.
    pub fn uid(&self, pid: u32) -> Option<u32> {
        self.processes.get(&pid)?.uid
    }

    /// The executable of a process, if known.
    pub fn exe(&self, pid: u32) -> Option<&str> {
        self.processes.get(&pid).map(|p| &*p.exe)
    }

    /// Evicts exited processes whose grace period is over.
    pub fn evict(&mut self, now: Instant) {
        let mut evicted = false;
        while let Some(&(at, pid)) = self.exited.front() {
            if now.saturating_duration_since(at) < self.limits.exited_grace {
                break;
            }
            self.exited.pop_front();
            // A reused pid that exec'd again is no longer the exited process.
            if self
                .processes
                .get(&pid)
                .is_some_and(|p| p.exited_at == Some(at))
            {
                self.processes.remove(&pid);
                evicted = true;
            }
        }
        if evicted && self.exes.len() > 64 && self.exes.len() > self.processes.len() / 2 {
            self.exes.retain(|exe| Arc::strong_count(exe) > 1);
        }
    }

    /// Approximate heap bytes held.
    pub fn approx_bytes(&self) -> usize {
        self.processes.capacity() * (size_of::<u32>() + size_of::<Process>() + 1)
            + self.exited.capacity() * size_of::<(Instant, u32)>()
            + self.sessions.approx_bytes()
            + self.exes.capacity() * (size_of::<Arc<str>>() + 1)
            + self.exes.iter().map(|e| e.len() + 16).sum::<usize>()
    }

    /// The lineage of a process in a container.
    pub fn lineage(&self, pid: u32) -> Option<Lineage> {
        self.processes.get(&pid)?.lineage()
    }

    fn insert(&mut self, pid: u32, process: Process) {
        if !self.processes.contains_key(&pid) && self.processes.len() >= self.limits.capacity {
            // Make room from the exited entries, oldest first, before refusing.
            while self.processes.len() >= self.limits.capacity {
                let Some((at, old)) = self.exited.pop_front() else {
                    break;
                };
                if self
                    .processes
                    .get(&old)
                    .is_some_and(|p| p.exited_at == Some(at))
                {
                    self.processes.remove(&old);
                }
            }
            if self.processes.len() >= self.limits.capacity {
                self.dropped += 1;
                return;
            }
        }
        self.processes.insert(pid, process);
    }

    fn intern(&mut self, exe: &str) -> Arc<str> {
        let mut end = exe.len().min(MAX_EXE_BYTES);
        while !exe.is_char_boundary(end) {
            end -= 1;
        }
        let exe = &exe[..end];
        if let Some(found) = self.exes.get(exe) {
            return found.clone();
        }
        let exe: Arc<str> = Arc::from(exe);
        self.exes.insert(exe.clone());
        exe
    }
}

/// One process found by [`scan_proc`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScannedProcess {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Executable path, or `[comm]` for kernel threads and processes whose exe is unreadable.
    pub exe: String,
    /// Command name.
    pub comm: String,
    /// Its cgroup2 path (`0::` in `/proc/<pid>/cgroup`), relative to the cgroup2 mount.
    pub cgroup_path: Option<String>,
    /// Its pid in its own namespace (the last `NSpid` of its status).
    pub ns_pid: Option<u32>,
    /// Its real uid (the first `Uid` of its status).
    pub uid: Option<u32>,
    /// It has a controlling terminal.
    pub tty: bool,
    /// When it started, in clock ticks after boot.
    pub start_ticks: u64,
}

/// Reads every process under a procfs mount (`/proc`): pid, parent, executable, cgroup, pid in
/// its namespace, terminal and start time. Processes that exit during the scan are skipped.
pub fn scan_proc(proc_root: &Path) -> Vec<ScannedProcess> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let Some(fields) = parse_stat_fields(&stat) else {
            continue;
        };
        let exe = std::fs::read_link(dir.join("exe"))
            .ok()
            .and_then(|p| p.to_str().map(str::to_owned))
            .unwrap_or_else(|| format!("[{}]", fields.comm));
        let cgroup_path = std::fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .map(str::to_owned)
            });
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name));
        let ns_pid = field("NSpid:").and_then(|line| line.split_whitespace().last()?.parse().ok());
        let uid = field("Uid:").and_then(|line| line.split_whitespace().next()?.parse().ok());
        found.push(ScannedProcess {
            pid,
            ppid: fields.ppid,
            exe,
            comm: fields.comm.to_owned(),
            cgroup_path,
            ns_pid,
            uid,
            tty: fields.tty_nr != 0,
            start_ticks: fields.start_ticks,
        });
    }
    found
}

/// `(comm, ppid)` from `/proc/<pid>/stat` text; comm may hold spaces and parentheses.
pub fn parse_stat(stat: &str) -> Option<(&str, u32)> {
    parse_stat_fields(stat).map(|f| (f.comm, f.ppid))
}

/// The fields of `/proc/<pid>/stat` the scan keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFields<'a> {
    /// Command name.
    pub comm: &'a str,
    /// Parent pid.
    pub ppid: u32,
    /// Controlling terminal's device number (0: none).
    pub tty_nr: u32,
    /// Start time in clock ticks after boot (0 when the line stops early).
    pub start_ticks: u64,
}

/// [`StatFields`] from `/proc/<pid>/stat` text; comm may hold spaces and parentheses.
pub fn parse_stat_fields(stat: &str) -> Option<StatFields<'_>> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    // Fields after comm, from field 3 (state) on.
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let tty_nr = rest.get(4).and_then(|t| t.parse::<i64>().ok()).unwrap_or(0) as u32;
    let start_ticks = rest.get(19).and_then(|t| t.parse().ok()).unwrap_or(0);
    Some(StatFields {
        comm,
        ppid,
        tty_nr,
        start_ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exes(chain: &[Ancestor]) -> Vec<&str> {
        chain.iter().map(|a| a.exe.as_str()).collect()
    }

    #[test]
    fn chain_of_parent_executables() {
        let mut table = ProcessTable::new(ProcessLimits::default());
        table.exec(1, 0, "/sbin/init");
        table.exec(100, 1, "/usr/bin/containerd-shim-runc-v2");
        table.exec(200, 100, "/usr/sbin/nginx");
        // nginx forks and the child execs sh, which forks and execs curl.
        table.exec(300, 200, "/bin/sh");
        table.exec(400, 300, "/usr/bin/curl");
        assert_eq!(
            exes(&table.ancestry(300)),
            [
                "/bin/sh",
                "/usr/sbin/nginx",
                "/usr/bin/containerd-shim-runc-v2",
                "/sbin/init"
            ]
        );
        assert_eq!(table.ancestry(300)[0].pid, 300);
        assert!(table.ancestry(0).is_empty());
        assert!(table.ancestry(999).is_empty());
    }

    #[test]
    fn forked_children_inherit_the_parent_executable() {
        let mut table = ProcessTable::new(ProcessLimits::default());
        table.exec(10, 1, "/usr/sbin/nginx");
        // A worker forked without exec, seen first in a file event.
        table.observe(11, 10, "nginx");
        assert_eq!(table.exe(11), Some("/usr/sbin/nginx"));
        table.exec(12, 11, "/bin/sh");
        assert_eq!(
            exes(&table.ancestry(11)),
            ["/usr/sbin/nginx", "/usr/sbin/nginx"]
        );
        // Unknown parent: the command name stands in.
        table.observe(50, 49, "mystery");
        assert_eq!(table.exe(50), Some("mystery"));
    }

    #[test]
    fn exited_processes_stay_for_the_grace_period() {
        let t0 = Instant::now();
        let limits = ProcessLimits::default();
        let mut table = ProcessTable::new(limits);
        table.exec(10, 1, "/bin/sh");
        table.exec(11, 10, "/usr/bin/curl");
        table.exit(10, t0);
        // A late event of the child still sees its dead parent.
        let later = t0 + limits.exited_grace - Duration::from_millis(1);
        table.evict(later);
        assert_eq!(exes(&table.ancestry(10)), ["/bin/sh"]);
        table.evict(t0 + limits.exited_grace);
        assert!(table.ancestry(10).is_empty());
        assert_eq!(table.len(), 1);
        // A reused pid that exec'd again is not evicted by the old exit.
        table.exit(11, t0);
        table.exec(11, 1, "/bin/true");
        table.evict(t0 + limits.exited_grace * 2);
        assert_eq!(table.exe(11), Some("/bin/true"));
    }

    #[test]
    fn depth_capacity_and_cycles_are_bounded() {
        let t0 = Instant::now();
        let mut table = ProcessTable::new(ProcessLimits {
            capacity: 4,
            exited_grace: Duration::from_secs(5),
            max_depth: 3,
        });
        for pid in 1..=4 {
            table.exec(pid, pid - 1, "/bin/sh");
        }
        assert_eq!(table.ancestry(4).len(), 3);
        table.exec(5, 4, "/bin/sh");
        assert_eq!(table.dropped(), 1);
        table.exit(1, t0);
        table.exec(5, 4, "/bin/sh");
        assert_eq!(table.len(), 4);
        assert_eq!(table.exe(5), Some("/bin/sh"));
        // A cycle (pid reuse can make one) ends the chain.
        let mut cyclic = ProcessTable::new(ProcessLimits::default());
        cyclic.exec(7, 8, "/a");
        cyclic.exec(8, 7, "/b");
        assert_eq!(exes(&cyclic.ancestry(7)), ["/a", "/b"]);
    }

    #[test]
    fn the_real_uid_before_an_event_is_the_previous_events() {
        let mut table = ProcessTable::new(ProcessLimits::default());
        table.exec(10, 1, "/bin/sh");
        // Unknown until an event says.
        assert_eq!(table.swap_uid(10, 1000), None);
        assert_eq!(table.swap_uid(10, 0), Some(1000));
        assert_eq!(table.uid(10), Some(0));
        // An exec keeps it; a child forked without exec starts with its parent's, and one
        // exec'd straight from it too.
        table.swap_uid(10, 1000);
        table.exec(10, 1, "/usr/bin/python3");
        assert_eq!(table.uid(10), Some(1000));
        table.observe(11, 10, "python3");
        assert_eq!(table.swap_uid(11, 0), Some(1000));
        table.exec(12, 10, "/tmp/exploit");
        assert_eq!(table.uid(12), Some(1000));
        // A process the table does not hold has none, and gets none.
        assert_eq!(table.swap_uid(99, 0), None);
        assert_eq!(table.uid(99), None);
    }

    #[test]
    fn scan_reads_the_real_uid() {
        let found = scan_proc(Path::new("/proc"));
        let me = std::process::id();
        let entry = found.iter().find(|p| p.pid == me).expect("this process");
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        assert_eq!(entry.uid, Some(uid));
    }

    #[test]
    fn long_executables_are_cut_at_a_char_boundary() {
        let mut table = ProcessTable::new(ProcessLimits::default());
        let long = "é".repeat(MAX_EXE_BYTES);
        table.exec(1, 0, &long);
        assert!(table.exe(1).unwrap().len() <= MAX_EXE_BYTES);
    }

    #[test]
    fn stat_lines() {
        assert_eq!(parse_stat("42 (a b) c) S 7 42 42 0"), Some(("a b) c", 7)));
        assert_eq!(parse_stat("1 (init) S 0 1 1"), Some(("init", 0)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S notanumber"), None);
    }

    #[test]
    fn scan_finds_this_process() {
        let found = scan_proc(Path::new("/proc"));
        let me = std::process::id();
        let entry = found.iter().find(|p| p.pid == me).expect("this process");
        assert_eq!(entry.ppid, std::os::unix::process::parent_id());
        assert!(entry.exe.starts_with('/'), "{}", entry.exe);
    }
}
