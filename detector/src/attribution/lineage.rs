//! Container lifecycle: which process in a container's cgroup is the runtime's and which is the
//! workload's, and how the workload's processes were started.
//!
//! A container's cgroup sees the runtime before it sees the workload: runc's (or crun's) init
//! stages join the cgroup, set the OOM score and sysctls under `/proc`, and then exec the
//! entrypoint; `docker exec`, `kubectl exec` and exec probes run the same way, a runtime
//! process joining the cgroup and exec-ing the command. [`super::process_table`] follows each
//! process from its place and its parent and gives it a [`Role`]:
//!
//! - a process in the cgroup that has not exec'd there, is no workload process's child, and
//!   carries a runtime's command name (`runc:[2:INIT]`, `conmon`...) is the runtime's
//!   ([`role_unseen`]); so is an exec of a runtime binary by such a process
//!   ([`is_runtime_exe`]);
//! - a process forked or exec'd by a workload process of the same cgroup inherits its role; one
//!   whose parent is in the cgroup but was never seen (a fork that made no event of its own,
//!   such as a subshell running a job) is the main process's while no exec session runs in
//!   the container, else an exec session's ([`Sessions::unseen_parent_role`]);
//! - an exec by anything else was started through the runtime: the first is the container's
//!   main process ([`Role::Entrypoint`]; pid 1 in its namespace is one whatever came before),
//!   later ones, while the main process lives, exec sessions ([`Role::ExecSession`]), and an
//!   exec session a probe ([`Role::Probe`]) when its pod's spec names its command as an exec
//!   probe of the container (cluster mode), or when its exact command line has started
//!   [`PROBE_REPEATS`] times in the cgroup.
//!
//! A workload process cannot make itself the runtime's: its children inherit its role, and the
//! kernel reparents an orphan to the namespace's pid 1, the main process. The exception is a
//! container sharing the node's pid namespace (`hostPID`), where an orphan goes to a process
//! outside the cgroup: an orphan that also renamed itself to a runtime's command name would be
//! taken for the runtime. Anything not known to be the runtime's is workload: an unknown
//! origin counts as an exec session.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash as _, Hasher as _},
};

use crate::event::Role;

/// Exec sessions of one command line in one cgroup that make the next one a probe.
pub const PROBE_REPEATS: u32 = 3;

/// Command names of container runtimes' own processes while they set a container up (runc
/// renames its init stages; crun, youki and conmon keep their names). `exe` is runc's init
/// before it renames itself: runc starts it as `/proc/self/exe init`, and its first step
/// (runc 1.1's cloned binary) bind-mounts, remounts read-only and unmounts a copy of itself,
/// sometimes after it has joined the container's cgroup. Only a process that joined the cgroup
/// from outside is judged by its name: a workload process renamed `exe` is its parent's.
pub const RUNTIME_COMMS: &[&str] = &[
    "exe",
    "runc",
    "runc:[0:PARENT]",
    "runc:[1:CHILD]",
    "runc:[2:INIT]",
    "crun",
    "youki",
    "youki:[1:INTER]",
    "youki:[2:INIT]",
    "conmon",
];

/// Executables of container runtimes (by file name), for the runtime's own execs inside a
/// pod's cgroups (CRI-O's conmon starting runc).
const RUNTIME_EXES: &[&str] = &[
    "runc",
    "crun",
    "youki",
    "conmon",
    "containerd-shim",
    "containerd-shim-runc-v1",
    "containerd-shim-runc-v2",
];

/// Where an event puts its process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Place {
    /// The cgroup id (0: unknown).
    pub cgroup: u64,
    /// The cgroup is a container's or a pod's.
    pub container: bool,
    /// The process's pid in its own namespace, when known.
    pub ns_pid: Option<u32>,
    /// The process has a controlling terminal (exec events).
    pub tty: bool,
    /// The exec's command is one of the container's exec probes in its pod's spec (cluster
    /// mode).
    pub probe: bool,
    /// The parent's cgroup at the exec (exec events, when the kernel could read it).
    pub parent_cgroup: Option<u64>,
}

impl Role {
    /// Activity of the workload (every role but the runtime's).
    pub fn is_workload(self) -> bool {
        self != Self::Runtime
    }
}

/// The role of a process first seen in a container's cgroup without an exec there: its
/// parent's when the parent is in the same cgroup (`inherited`), else the runtime's when its
/// command name is a runtime's, else the workload's (`unseen`: forked inside by a process that
/// made no event; only the node could have moved it in).
pub fn role_unseen(comm: &str, inherited: Option<Role>, unseen: Role) -> Role {
    match inherited {
        Some(role) => role,
        None if RUNTIME_COMMS.contains(&comm) => Role::Runtime,
        None => unseen,
    }
}

/// `exe` is a container runtime's binary.
pub fn is_runtime_exe(exe: &str) -> bool {
    let name = exe.rsplit('/').next().unwrap_or(exe);
    RUNTIME_EXES.contains(&name)
}

/// A runtime process exec-ing the runtime again under another name: runc runs a copy of itself
/// cloned into memory (`/dev/fd/N` or `/proc/self/fd/N`, argv `runc init`) so that the
/// container cannot overwrite its binary. Only asked of a process that is the runtime's already.
pub fn is_runtime_reexec(argv: &[String]) -> bool {
    argv.first().is_some_and(|arg0| is_runtime_exe(arg0))
}

/// Per container cgroup: its main process and how often each command line was started
/// through the runtime. Bounded: at most `capacity` cgroups and `capacity` command lines,
/// emptied when full (the main processes are found again by their pid 1, and a probe's count
/// starts over).
#[derive(Debug)]
pub struct Sessions {
    main: HashMap<u64, u32>,
    starts: HashMap<(u64, u64), u32>,
    /// Exec sessions running per cgroup (their leaders).
    live: HashMap<u64, u32>,
    capacity: usize,
}

impl Sessions {
    /// Empty, for at most `capacity` cgroups and command lines.
    pub fn new(capacity: usize) -> Self {
        Self {
            main: HashMap::new(),
            starts: HashMap::new(),
            live: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The main process of a cgroup.
    pub fn main(&self, cgroup: u64) -> Option<u32> {
        self.main.get(&cgroup).copied()
    }

    /// `pid` is the main process of `cgroup`.
    pub fn set_main(&mut self, cgroup: u64, pid: u32) {
        if self.main.len() >= self.capacity && !self.main.contains_key(&cgroup) {
            self.main.clear();
        }
        self.main.insert(cgroup, pid);
    }

    /// `pid`, the main process of `cgroup`, exited: the container is over.
    pub fn end(&mut self, cgroup: u64, pid: u32) {
        if self.main.get(&cgroup) == Some(&pid) {
            self.main.remove(&cgroup);
            self.live.remove(&cgroup);
            self.starts.retain(|(c, _), _| *c != cgroup);
        }
    }

    /// An exec session's leader started (`true`) or exited in `cgroup`.
    pub fn session(&mut self, cgroup: u64, started: bool) {
        if started {
            if self.live.len() >= self.capacity && !self.live.contains_key(&cgroup) {
                self.live.clear();
            }
            *self.live.entry(cgroup).or_default() += 1;
        } else if let Some(n) = self.live.get_mut(&cgroup) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.live.remove(&cgroup);
            }
        }
    }

    /// The role of a process whose parent is in `cgroup` but was never seen: the main
    /// process's while no exec session runs there, else (it may be a session's) an exec
    /// session's.
    pub fn unseen_parent_role(&self, cgroup: u64) -> Role {
        if self.live.contains_key(&cgroup) {
            Role::ExecSession
        } else {
            Role::Entrypoint
        }
    }

    /// Counts an exec session of `exe` with `argv` in `cgroup`; how many there were so far,
    /// this one included.
    pub fn started(&mut self, cgroup: u64, exe: &str, argv: &[String]) -> u32 {
        let mut hasher = DefaultHasher::new();
        exe.hash(&mut hasher);
        argv.hash(&mut hasher);
        let key = (cgroup, hasher.finish());
        if self.starts.len() >= self.capacity && !self.starts.contains_key(&key) {
            self.starts.clear();
        }
        let count = self.starts.entry(key).or_default();
        *count = count.saturating_add(1);
        *count
    }

    /// Approximate heap bytes held.
    pub fn approx_bytes(&self) -> usize {
        (self.main.capacity() + self.live.capacity()) * (size_of::<(u64, u32)>() + 1)
            + self.starts.capacity() * (size_of::<((u64, u64), u32)>() + 1)
    }
}

/// A process in a container's cgroup found by the start-up scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found<'a> {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Its cgroup id.
    pub cgroup: u64,
    /// Command name.
    pub comm: &'a str,
    /// Its pid in its own namespace.
    pub ns_pid: Option<u32>,
    /// Start time (any monotonic unit).
    pub start: u64,
}

/// Roles of the processes already running in containers when the daemon starts, from the
/// shape of each container's process tree. A process whose parent is outside its cgroup was
/// put there by the runtime: the runtime's own when it has a runtime's command name, else the
/// main process when it is pid 1 in its namespace (or, in a container with none, the oldest),
/// else an exec session. Every other process has its tree's root's role. With each role: whether
/// the process is its tree's root (the one the runtime started).
pub fn seed_roles(found: &[Found<'_>]) -> HashMap<u32, (Role, bool)> {
    let by_pid: HashMap<u32, &Found<'_>> = found.iter().map(|f| (f.pid, f)).collect();
    let is_root = |f: &Found<'_>| by_pid.get(&f.ppid).is_none_or(|p| p.cgroup != f.cgroup);
    let mut main: HashMap<u64, &Found<'_>> = HashMap::new();
    for f in found
        .iter()
        .filter(|f| is_root(f) && !RUNTIME_COMMS.contains(&f.comm))
    {
        let better = match main.get(&f.cgroup) {
            None => true,
            Some(m) => {
                let pid1 = |x: &Found<'_>| x.ns_pid == Some(1);
                (pid1(f), std::cmp::Reverse(f.start)) > (pid1(m), std::cmp::Reverse(m.start))
            }
        };
        if better {
            main.insert(f.cgroup, f);
        }
    }
    let root_role = |f: &Found<'_>| {
        if RUNTIME_COMMS.contains(&f.comm) {
            Role::Runtime
        } else if main.get(&f.cgroup).is_some_and(|m| m.pid == f.pid) {
            Role::Entrypoint
        } else {
            Role::ExecSession
        }
    };
    let mut roles = HashMap::with_capacity(found.len());
    for f in found {
        let mut at = f;
        // Parent chains are short; the bound only guards against a cycle of reused pids.
        for _ in 0..64 {
            if is_root(at) {
                break;
            }
            at = by_pid[&at.ppid];
        }
        roles.insert(f.pid, (root_role(at), at.pid == f.pid));
    }
    roles
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::attribution::process_table::{ProcessLimits, ProcessTable};

    const HOST: Place = Place {
        cgroup: 1,
        container: false,
        ns_pid: None,
        tty: false,
        probe: false,
        parent_cgroup: None,
    };
    const C: u64 = 500;

    fn at(ns_pid: Option<u32>, tty: bool) -> Place {
        Place {
            cgroup: C,
            container: true,
            ns_pid,
            tty,
            probe: false,
            parent_cgroup: None,
        }
    }

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| (*a).to_owned()).collect()
    }

    fn role(l: Option<crate::event::Lineage>) -> (Role, bool) {
        let l = l.expect("a lineage in a container");
        (l.role, l.leader)
    }

    /// runc's start of a container, as the events show it: its init stages in the cgroup
    /// before their exec, then the entrypoint. `host_seen`: the node's processes are reported
    /// too (`watch: all`).
    fn start(table: &mut ProcessTable, host_seen: bool) {
        if host_seen {
            table.exec_at(100, 1, "/usr/bin/containerd-shim-runc-v2", &HOST, &[]);
            table.exec_at(
                200,
                100,
                "/usr/sbin/runc",
                &HOST,
                &argv(&["runc", "create"]),
            );
            table.exec_at(201, 200, "/proc/self/exe", &HOST, &argv(&["runc", "init"]));
        }
        // runc's init before it renames itself, moved into the cgroup: its cloned binary's
        // bind mount.
        let exe = table.observe_at(201, 200, "exe", &at(None, false));
        assert_eq!(role(exe), (Role::Runtime, false));
        // runc's parent stage sets its OOM score.
        let parent = table.observe_at(201, 200, "runc:[0:PARENT]", &at(None, false));
        assert_eq!(role(parent), (Role::Runtime, false));
        let child = table.observe_at(202, 201, "runc:[1:CHILD]", &at(None, false));
        assert_eq!(role(child), (Role::Runtime, false));
        // The init stage writes sysctls, reparented to the shim.
        let init = table.observe_at(203, 100, "runc:[2:INIT]", &at(Some(1), false));
        assert_eq!(role(init), (Role::Runtime, false));
        let main = table.exec_at(
            203,
            100,
            "/usr/sbin/nginx",
            &at(Some(1), false),
            &argv(&["nginx"]),
        );
        assert_eq!(role(main), (Role::Entrypoint, true));
    }

    #[test]
    fn a_container_start_is_the_runtime_then_the_entrypoint() {
        for host_seen in [true, false] {
            let mut table = ProcessTable::new(ProcessLimits::default());
            start(&mut table, host_seen);
            // The main process's children are the entrypoint's, not started by the runtime.
            let worker = table.observe_at(204, 203, "nginx", &at(Some(2), false));
            assert_eq!(role(worker), (Role::Entrypoint, false));
            let shell = table.exec_at(205, 204, "/bin/sh", &at(Some(3), false), &argv(&["sh"]));
            assert_eq!(role(shell), (Role::Entrypoint, false));
            // A shell-form entrypoint exec-ing its server stays the leader.
            let again = table.exec_at(203, 100, "/usr/sbin/nginx", &at(Some(1), false), &[]);
            assert_eq!(role(again), (Role::Entrypoint, true));
        }
    }

    #[test]
    fn exec_sessions_and_probes_come_through_the_runtime() {
        let mut table = ProcessTable::new(ProcessLimits::default());
        start(&mut table, true);
        let probe = argv(&["cat", "/tmp/healthy"]);
        for (pid, want) in [
            (300, Role::ExecSession),
            (301, Role::ExecSession),
            (302, Role::Probe),
            (303, Role::Probe),
        ] {
            let init = table.observe_at(pid, 100, "runc:[2:INIT]", &at(Some(9), false));
            assert_eq!(role(init), (Role::Runtime, false));
            let cmd = table.exec_at(pid, 100, "/usr/bin/cat", &at(Some(9), false), &probe);
            assert_eq!(role(cmd), (want, true), "pid {pid}");
            table.exit(pid, Instant::now());
        }
        // Another command is a session of its own; its terminal is its own.
        let session = table.exec_at(310, 100, "/bin/bash", &at(Some(10), true), &argv(&["bash"]));
        let session = session.unwrap();
        assert_eq!(
            (session.role, session.leader, session.tty),
            (Role::ExecSession, true, true)
        );
        let child = table
            .observe_at(311, 310, "bash", &at(Some(11), false))
            .unwrap();
        assert_eq!(
            (child.role, child.leader, child.tty),
            (Role::ExecSession, false, true)
        );
    }

    #[test]
    fn a_probe_in_the_pod_spec_is_one_from_its_first_run() {
        let mut table = ProcessTable::new(ProcessLimits::default());
        start(&mut table, true);
        let probe = Place {
            probe: true,
            ..at(Some(9), false)
        };
        let first = table.exec_at(
            300,
            100,
            "/usr/bin/curl",
            &probe,
            &argv(&["curl", "-f", "x"]),
        );
        assert_eq!(role(first), (Role::Probe, true));
        // The spec only counts for what the runtime starts: a workload's exec stays its.
        let inside = table.exec_at(
            301,
            203,
            "/usr/bin/curl",
            &probe,
            &argv(&["curl", "-f", "x"]),
        );
        assert_eq!(role(inside), (Role::Entrypoint, false));
    }

    #[test]
    fn a_parent_in_the_container_never_seen_is_the_workload() {
        let mut table = ProcessTable::new(ProcessLimits::default());
        start(&mut table, true);
        // A subshell the entrypoint forked runs logrotate: its parent made no event.
        let forked = Place {
            parent_cgroup: Some(C),
            ..at(Some(40), false)
        };
        let job = table.exec_at(600, 599, "/usr/sbin/logrotate", &forked, &[]);
        assert_eq!(role(job), (Role::Entrypoint, false));
        // While an exec session runs, such a process may be the session's.
        let session = table.exec_at(
            610,
            100,
            "/bin/bash",
            &at(Some(41), false),
            &argv(&["bash"]),
        );
        assert_eq!(role(session), (Role::ExecSession, true));
        let unclear = table.exec_at(611, 598, "/usr/bin/tar", &forked, &[]);
        assert_eq!(role(unclear), (Role::ExecSession, false));
        table.exit(610, Instant::now());
        // The table knows the parent's pid only from a node process of an earlier life.
        table.exec_at(597, 1, "/usr/sbin/cron", &HOST, &[]);
        let after = table.exec_at(612, 597, "/usr/bin/tar", &forked, &[]);
        assert_eq!(role(after), (Role::Entrypoint, false));
    }

    #[test]
    fn the_workload_cannot_pass_for_the_runtime() {
        let mut table = ProcessTable::new(ProcessLimits::default());
        start(&mut table, false);
        // A child of the workload renaming itself like runc's init is still the workload.
        let fake = table.observe_at(400, 203, "runc:[2:INIT]", &at(Some(4), false));
        assert_eq!(role(fake), (Role::Entrypoint, false));
        // So is an exec of a file named like a runtime by the workload.
        let runc = table.exec_at(401, 203, "/tmp/runc", &at(Some(5), false), &[]);
        assert_eq!(role(runc), (Role::Entrypoint, false));
        // A process of unknown origin, not named like a runtime, is workload.
        let stray = table.observe_at(402, 77, "python3", &at(Some(6), false));
        assert_eq!(role(stray), (Role::Entrypoint, false));
        // The runtime's own binary exec'd by the runtime (conmon starting runc) stays its.
        let conmon_runc = table.exec_at(403, 100, "/usr/bin/runc", &at(None, false), &[]);
        assert_eq!(role(conmon_runc), (Role::Runtime, false));
        // runc's init re-exec-ing its copy in memory stays the runtime's, then its exec of the
        // command is the session.
        table.observe_at(404, 100, "runc:[2:INIT]", &at(Some(7), false));
        let clone = table.exec_at(
            404,
            100,
            "/dev/fd/6",
            &at(Some(7), false),
            &argv(&["runc", "init"]),
        );
        assert_eq!(role(clone), (Role::Runtime, false));
        let cmd = table.exec_at(404, 100, "/bin/ls", &at(Some(7), false), &argv(&["ls"]));
        assert_eq!(role(cmd), (Role::ExecSession, true));
        // The same argv from a workload process is the workload's.
        let fake = table.exec_at(
            405,
            203,
            "/dev/fd/6",
            &at(Some(8), false),
            &argv(&["runc", "init"]),
        );
        assert_eq!(role(fake), (Role::Entrypoint, false));
    }

    #[test]
    fn without_a_pid_namespace_the_first_process_is_the_main_one() {
        // hostPID: no pid 1; the first process the runtime starts is the main one, the rest
        // exec sessions, until the main one exits.
        let mut table = ProcessTable::new(ProcessLimits::default());
        let place = at(Some(700), false);
        let main = table.exec_at(700, 100, "/app", &place, &argv(&["/app"]));
        assert_eq!(role(main), (Role::Entrypoint, true));
        let session = table.exec_at(701, 100, "/bin/ls", &at(Some(701), false), &[]);
        assert_eq!(role(session), (Role::ExecSession, true));
        table.exit(700, Instant::now());
        let next = table.exec_at(702, 100, "/app", &at(Some(702), false), &[]);
        assert_eq!(role(next), (Role::Entrypoint, true));
    }

    #[test]
    fn roles_of_containers_running_before_the_daemon() {
        let found = [
            // Container 10: the main process (pid 1 inside), its child, an exec session.
            Found {
                pid: 20,
                ppid: 5,
                cgroup: 10,
                comm: "nginx",
                ns_pid: Some(1),
                start: 100,
            },
            Found {
                pid: 21,
                ppid: 20,
                cgroup: 10,
                comm: "nginx",
                ns_pid: Some(2),
                start: 101,
            },
            Found {
                pid: 30,
                ppid: 5,
                cgroup: 10,
                comm: "bash",
                ns_pid: Some(7),
                start: 500,
            },
            Found {
                pid: 31,
                ppid: 30,
                cgroup: 10,
                comm: "sleep",
                ns_pid: Some(8),
                start: 501,
            },
            // Container 11 shares the node's pid namespace: the oldest root is the main one.
            Found {
                pid: 41,
                ppid: 5,
                cgroup: 11,
                comm: "sh",
                ns_pid: Some(41),
                start: 300,
            },
            Found {
                pid: 40,
                ppid: 5,
                cgroup: 11,
                comm: "app",
                ns_pid: Some(40),
                start: 200,
            },
            // The runtime caught setting a container up.
            Found {
                pid: 50,
                ppid: 5,
                cgroup: 12,
                comm: "runc:[2:INIT]",
                ns_pid: Some(1),
                start: 600,
            },
        ];
        let roles = seed_roles(&found);
        assert_eq!(roles[&20], (Role::Entrypoint, true));
        assert_eq!(roles[&21], (Role::Entrypoint, false));
        assert_eq!(roles[&30], (Role::ExecSession, true));
        assert_eq!(roles[&31], (Role::ExecSession, false));
        assert_eq!(roles[&40], (Role::Entrypoint, true));
        assert_eq!(roles[&41], (Role::ExecSession, true));
        assert_eq!(roles[&50], (Role::Runtime, true));
    }

    #[test]
    fn sessions_are_bounded() {
        let mut sessions = Sessions::new(2);
        for cgroup in 0..10 {
            sessions.set_main(cgroup, 1);
            sessions.started(cgroup, "/bin/true", &[]);
        }
        assert!(sessions.main.len() <= 2 && sessions.starts.len() <= 2);
        sessions.end(9, 1);
        assert_eq!(sessions.main(9), None);
    }
}
