//! Typed, owned events: what the rest of the daemon works with, and their JSON form.
//!
//! Every event serializes as one flat JSON object with the same leading keys (`kind`, `ts`,
//! `ktime_ns`, `pid`, `tid`, `ppid`, `uid`, `gid`, `cgroup_id`, `comm`), `null` where a key does
//! not apply (egress and loss records are not about one process), followed by the kind's fields.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// One event. Its JSON form reads back into the same value (replays depend on it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Wall-clock time derived from the kernel timestamp.
    #[serde(
        rename = "ts",
        serialize_with = "rfc3339",
        deserialize_with = "from_rfc3339"
    )]
    pub time: OffsetDateTime,
    /// Kernel `CLOCK_BOOTTIME` nanoseconds; orders events exactly.
    pub ktime_ns: u64,
    /// The process, absent for node-level records.
    #[serde(flatten)]
    pub process: ProcessFields,
    /// cgroup2 id of the task (or of the counted cgroup).
    pub cgroup_id: Option<u64>,
    /// The container the task runs in, when its cgroup is a container's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// The pod the container belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
    /// Executables of the parent chain, nearest parent first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestry: Vec<Ancestor>,
    /// Where the process stands in its container's life (who started it, whether it has a
    /// terminal); absent outside containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
    /// What happened.
    #[serde(flatten)]
    pub body: Body,
}

/// A container, from its cgroup path and, when known, the runtime or the pod spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// Full container id.
    pub id: String,
    /// `docker`, `containerd`, `cri-o` or `podman`.
    pub runtime: String,
    /// Container name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Image reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// A pod, from its cgroup path (uid, QoS class) and the API (the rest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// Pod UID.
    pub uid: String,
    /// Namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Top of the owner chain (a ReplicaSet's Deployment, a StatefulSet, a Job...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Node name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// QoS class from the cgroup path: `guaranteed`, `burstable` or `besteffort`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    /// False when the pod was not found in the API within the hold time.
    pub resolved: bool,
}

/// A controller owning a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Name.
    pub name: String,
}

/// One process of the parent chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ancestor {
    /// Process id.
    pub pid: u32,
    /// Executable path (or command name when the exec was not seen).
    pub exe: String,
}

/// Who started a process in a container, as the process table followed it from the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The role of the process.
    pub role: Role,
    /// The process has a controlling terminal (an interactive session, `docker exec -t`,
    /// `kubectl exec -it`), as of its last exec.
    pub tty: bool,
    /// The process is the one the runtime started (the entrypoint's or the exec session's own
    /// command, through its later execs), not one of its descendants.
    pub leader: bool,
}

/// Who started a process in a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The container runtime setting the container up (runc or crun init stages before their
    /// exec, conmon, a process the node moved into the cgroup): not workload activity.
    Runtime,
    /// The container's main process (the entrypoint's first exec) and its descendants.
    Entrypoint,
    /// A session started in the running container through the runtime (`docker exec`,
    /// `kubectl exec`, a CRI exec) and its descendants.
    ExecSession,
    /// An exec session recognised as a probe: the same command started through the runtime
    /// again and again (health checks, exec probes).
    Probe,
}

impl Role {
    /// The name used in JSON and in rule conditions.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Runtime => "runtime",
            Self::Entrypoint => "entrypoint",
            Self::ExecSession => "exec_session",
            Self::Probe => "probe",
        }
    }

    /// Every role, in declaration order.
    pub const ALL: [Self; 4] = [
        Self::Runtime,
        Self::Entrypoint,
        Self::ExecSession,
        Self::Probe,
    ];
}

/// Process identity from the event header; every field `None` for node-level records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessFields {
    /// Process id (thread-group id).
    pub pid: Option<u32>,
    /// Thread id.
    pub tid: Option<u32>,
    /// Parent process id.
    pub ppid: Option<u32>,
    /// Real uid.
    pub uid: Option<u32>,
    /// Real gid.
    pub gid: Option<u32>,
    /// Process id in the process's own pid namespace (what it calls itself; 1 for a
    /// container's main process), when the kernel could read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    /// Command name.
    pub comm: Option<String>,
}

impl Event {
    /// Bytes the event holds in memory, itself and what its strings, lists and maps point to
    /// (their lengths; an allocator's rounding is not counted): what a store of events sizes
    /// its budget by.
    pub fn approx_bytes(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let list = |items: &[String]| {
            items
                .iter()
                .map(|item| size_of::<String>() + item.len())
                .sum::<usize>()
        };
        let container = self.container.as_ref().map_or(0, |c| {
            c.id.len() + c.runtime.len() + opt(&c.name) + opt(&c.image)
        });
        let pod = self.pod.as_ref().map_or(0, |p| {
            p.uid.len()
                + opt(&p.namespace)
                + opt(&p.name)
                + p.labels
                    .iter()
                    // A B-tree node's share per entry besides the key and value.
                    .map(|(k, v)| k.len() + v.len() + 2 * size_of::<String>())
                    .sum::<usize>()
                + p.owner.as_ref().map_or(0, |o| o.kind.len() + o.name.len())
                + opt(&p.node)
                + opt(&p.qos)
        });
        let ancestry = self
            .ancestry
            .iter()
            .map(|a| size_of::<Ancestor>() + a.exe.len())
            .sum::<usize>();
        let body = match &self.body {
            Body::Exec(e) => e.filename.len() + list(&e.argv),
            Body::File(f) => {
                f.path.len()
                    + opt(&f.target)
                    + opt(&f.original_path)
                    + opt(&f.original_target)
                    + opt(&f.self_path)
            }
            Body::Connect(c) => c.family.len() + c.protocol.len(),
            Body::Syscall(s) => {
                s.syscall.len()
                    + list(&s.tags)
                    + opt(&s.request)
                    + opt(&s.path)
                    + opt(&s.fstype)
                    + opt(&s.name)
            }
            Body::Loss(l) => l.source.len() + l.lost_kind.len() + opt(&l.reason),
            Body::Exit(_) | Body::Egress(_) => 0,
        };
        size_of::<Self>() + opt(&self.process.comm) + container + pod + ancestry + body
    }
}

/// The kind-specific part of an event; `kind` is its tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Body {
    /// A successful exec.
    Exec(Exec),
    /// A process exit.
    Exit(Exit),
    /// File activity.
    File(FileActivity),
    /// An outbound connect.
    Connect(Connect),
    /// A system call of interest other than file and network I/O.
    Syscall(Syscall),
    /// Egress volume of one cgroup over one sampling interval.
    Egress(Egress),
    /// Records that did not reach user space, or could not be decoded.
    Loss(Loss),
}

impl Body {
    /// The `kind` string of the JSON form.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Exec(_) => "exec",
            Self::Exit(_) => "exit",
            Self::File(_) => "file",
            Self::Connect(_) => "connect",
            Self::Syscall(_) => "syscall",
            Self::Egress(_) => "egress",
            Self::Loss(_) => "loss",
        }
    }
}

/// A successful exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    /// Path given to exec.
    pub filename: String,
    /// Arguments, `argv[0]` first.
    pub argv: Vec<String>,
    /// The arguments were longer than the kernel copies; `argv` holds the start.
    pub argv_truncated: bool,
    /// The filename was longer than the kernel copies.
    pub filename_truncated: bool,
    /// The process has a controlling terminal.
    #[serde(default)]
    pub tty: bool,
    /// cgroup2 id of the parent at the exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_cgroup_id: Option<u64>,
    /// The executable is a memfd (on a kernel-internal mount): fileless execution, nothing on
    /// any filesystem.
    #[serde(default)]
    pub fileless: bool,
    /// Descriptor 0 of the new program is an IPv4 or IPv6 socket (a reverse shell's stdin).
    #[serde(default)]
    pub stdin_socket: bool,
    /// Descriptor 1 of the new program is an IPv4 or IPv6 socket.
    #[serde(default)]
    pub stdout_socket: bool,
    /// The executable had been unlinked (run through `/proc/self/fd/N` or `execveat`): a
    /// binary dropped and removed, or replaced while it ran.
    #[serde(default)]
    pub deleted: bool,
}

/// A process exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Raw `exit_code` as the kernel keeps it.
    pub exit_code: u32,
    /// Exit status when the process exited normally.
    pub exit_status: Option<u32>,
    /// Terminating signal when it was killed.
    pub signal: Option<u32>,
}

/// What was done to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileOperation {
    /// An open.
    Open,
    /// An unlink.
    Unlink,
    /// A chmod.
    Chmod,
    /// A rename.
    Rename,
    /// A truncate.
    Truncate,
    /// A hard link: `path` is the existing file, `target` the new name.
    Link,
    /// A symbolic link: `path` is what the link points to (as given), `target` the link.
    Symlink,
}

impl FileOperation {
    /// Every operation, in declaration order.
    pub const ALL: [Self; 7] = [
        Self::Open,
        Self::Unlink,
        Self::Chmod,
        Self::Rename,
        Self::Truncate,
        Self::Link,
        Self::Symlink,
    ];

    /// The name used in JSON and in rule conditions.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Unlink => "unlink",
            Self::Chmod => "chmod",
            Self::Rename => "rename",
            Self::Truncate => "truncate",
            Self::Link => "link",
            Self::Symlink => "symlink",
        }
    }
}

/// File activity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileActivity {
    /// The operation.
    pub op: FileOperation,
    /// The path: resolved in the kernel from the opened file when `resolved`, joined to its
    /// directory when `joined`, as passed to the syscall otherwise.
    pub path: String,
    /// `open` flags (`O_*`), or the mode for chmod.
    pub flags: u32,
    /// The open asked for write, create or truncate.
    pub write: bool,
    /// The path is under a sensitive-write prefix.
    pub sensitive: bool,
    /// The path is under a read-sensitive prefix.
    pub read_sensitive: bool,
    /// The path is relative to `dirfd` (-100: the working directory).
    pub relative: bool,
    /// Directory fd of a relative path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirfd: Option<i32>,
    /// The path was longer than the kernel copies.
    pub path_truncated: bool,
    /// New path of a rename, new name of a link or symlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Identical write-opens suppressed in the kernel since the previous reported one.
    pub suppressed: u32,
    /// What the syscall returned: a descriptor (opens) or 0, `-errno` on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<i32>,
    /// `path` is the kernel's resolution of the opened file (symlinks, `..`, relative paths and
    /// mounts followed), as the process sees it from its root.
    #[serde(default)]
    pub resolved: bool,
    /// The opened file (or, when `joined`, the directory) lies outside the process's root
    /// (another mount namespace, or above a chroot); `path` is absolute in the file's own
    /// mount namespace.
    #[serde(default)]
    pub outside_root: bool,
    /// A relative path of an unlink, chmod, rename or failed open (`path`, or the rename's
    /// `target`) was joined in the kernel to the directory it is relative to, resolved as an opened file's
    /// path is: `<directory>/<argument>`, with the argument as passed (`.`, `..` and
    /// symlinks in it not followed).
    #[serde(default)]
    pub joined: bool,
    /// `path` as the kernel reported it, when it held `.` or `..` components that user space
    /// resolved by its text (`path` is then the normalized path, and the class is of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_path: Option<String>,
    /// A rename's `target` as the kernel reported it, as `original_path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_target: Option<String>,
    /// `path` with the process's own `/proc` entry written as `/proc/self`, whatever number
    /// the kernel resolved (`/proc/<pid>/...` in the node's or the container's pid
    /// namespace, or one of its threads' `/proc/<tid>/...`); rules match it as well as `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_path: Option<String>,
    /// The path is a log or a shell history (clearing tracks when unlinked, renamed or
    /// truncated).
    #[serde(default)]
    pub log: bool,
    /// The kernel could not resolve the path within its bounds: `path` is the argument as
    /// passed, and the classes are conservative (see
    /// [`detector_common::file_flags::UNRESOLVED`]).
    #[serde(default)]
    pub unresolved: bool,
    /// The operation was submitted through an io_uring ring, not made by a system call.
    #[serde(default)]
    pub io_uring: bool,
}

/// An outbound connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connect {
    /// `ipv4` or `ipv6`.
    pub family: String,
    /// `tcp`, `udp` or the protocol number.
    pub protocol: String,
    /// Destination address.
    pub daddr: IpAddr,
    /// Destination port.
    pub dport: u16,
    /// The connect was refused because the cgroup is quarantined.
    #[serde(default)]
    pub blocked: bool,
}

/// System calls the sensors report, as [`Syscall::op`] names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyscallOperation {
    /// `ptrace` attaching to a process or asking to be traced.
    Ptrace,
    /// A packet or raw socket.
    Socket,
    /// `mount`.
    Mount,
    /// `umount2`.
    Umount,
    /// `unshare`.
    Unshare,
    /// `setns`.
    Setns,
    /// `pivot_root`.
    PivotRoot,
    /// `memfd_create`: an anonymous file, the usual start of fileless execution.
    MemfdCreate,
    /// `init_module` or `finit_module`.
    ModuleLoad,
    /// `bpf(BPF_PROG_LOAD)`.
    BpfProgLoad,
    /// `setuid`, `setreuid` or `setresuid` asking for uid 0.
    Setuid,
    /// `dup2`/`dup3` of an IPv4 or IPv6 socket onto standard input, output or error.
    DupSocket,
    /// `io_uring_setup`.
    IoUringSetup,
    /// `mknod`/`mknodat` of a block or character device.
    Mknod,
}

impl SyscallOperation {
    /// Every operation, in declaration order.
    pub const ALL: [Self; 14] = [
        Self::Ptrace,
        Self::Socket,
        Self::Mount,
        Self::Umount,
        Self::Unshare,
        Self::Setns,
        Self::PivotRoot,
        Self::MemfdCreate,
        Self::ModuleLoad,
        Self::BpfProgLoad,
        Self::Setuid,
        Self::DupSocket,
        Self::IoUringSetup,
        Self::Mknod,
    ];

    /// The name used in JSON and in rule conditions.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ptrace => "ptrace",
            Self::Socket => "socket",
            Self::Mount => "mount",
            Self::Umount => "umount",
            Self::Unshare => "unshare",
            Self::Setns => "setns",
            Self::PivotRoot => "pivot_root",
            Self::MemfdCreate => "memfd_create",
            Self::ModuleLoad => "module_load",
            Self::BpfProgLoad => "bpf_prog_load",
            Self::Setuid => "setuid",
            Self::DupSocket => "dup_socket",
            Self::IoUringSetup => "io_uring_setup",
            Self::Mknod => "mknod",
        }
    }
}

/// A system call of interest, refused ones too: its operation, the call, what it returned,
/// its arguments as words rules match (`tags`) and, typed, the arguments of its operation
/// (the fields that do not apply are absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Syscall {
    /// What was done.
    pub op: SyscallOperation,
    /// The system call's name (`setresuid`, `finit_module`, `dup3`...), or its number when
    /// this architecture's table does not name it.
    pub syscall: String,
    /// What the call returned (`-errno` on failure).
    pub result: i64,
    /// The arguments as words: flag and type names (`newuser`, `bind`, `raw`, `kprobe`...),
    /// `fstype:<type>` for a mount, `to_root`/`from_non_root` for a setuid, `refused` when the
    /// call failed.
    #[serde(default)]
    pub tags: Vec<String>,
    /// ptrace: the request (`attach`, `seize`, `traceme`, else its number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// ptrace: the process attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_pid: Option<u32>,
    /// socket, dup_socket: the address family (`AF_*` number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<u32>,
    /// socket: the type (`SOCK_*`, with its `SOCK_NONBLOCK`/`SOCK_CLOEXEC` bits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_type: Option<u32>,
    /// socket: the protocol (for a packet socket, the Ethernet protocol in network order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    /// mount, umount: the mount point; pivot_root: the new root; mknod: the node's path; all
    /// as passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// mount: the filesystem type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fstype: Option<String>,
    /// mount (`MS_*`), umount (`MNT_*`), unshare (`CLONE_*`), setns (the namespace type,
    /// `CLONE_NEW*` or 0), memfd_create (`MFD_*`), finit_module and io_uring_setup flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<u64>,
    /// setns: the namespace descriptor; finit_module: the module's descriptor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// memfd_create: the name given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// init_module: the module image's length in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// bpf_prog_load: the program type (`BPF_PROG_TYPE_*` number; its name is a tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prog_type: Option<u32>,
    /// setuid: the real uid asked for, absent when left unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ruid: Option<u32>,
    /// setuid: the effective uid asked for, absent when left unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub euid: Option<u32>,
    /// setuid: the saved uid asked for, absent when left unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suid: Option<u32>,
    /// dup_socket: the socket's descriptor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_fd: Option<i32>,
    /// dup_socket: the descriptor it was put on (0, 1 or 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_fd: Option<i32>,
    /// io_uring_setup: the submission queue's entries asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<u32>,
    /// mknod: the mode (file type and permissions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// mknod: the device number, as the system call takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<u64>,
}

impl Syscall {
    /// A call of `op` with no tags and no arguments yet.
    pub fn new(op: SyscallOperation, syscall: impl Into<String>, result: i64) -> Self {
        Self {
            op,
            syscall: syscall.into(),
            result,
            tags: Vec::new(),
            request: None,
            target_pid: None,
            family: None,
            socket_type: None,
            protocol: None,
            path: None,
            fstype: None,
            flags: None,
            fd: None,
            name: None,
            length: None,
            prog_type: None,
            ruid: None,
            euid: None,
            suid: None,
            old_fd: None,
            new_fd: None,
            entries: None,
            mode: None,
            dev: None,
        }
    }

    /// Whether the call has this tag.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// Egress volume of one cgroup over one interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress {
    /// Bytes sent in the interval (IP layer).
    pub bytes: u64,
    /// Packets sent in the interval.
    pub packets: u64,
    /// Length of the interval in milliseconds.
    pub interval_ms: u64,
    /// Bytes sent since the daemon started counting this cgroup.
    pub total_bytes: u64,
}

/// Records that were lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loss {
    /// Where they were lost: `ring_buffer` (the kernel could not reserve space) or `decode`
    /// (user space could not decode a record).
    pub source: String,
    /// Kind of the lost records.
    pub lost_kind: String,
    /// Records lost since the previous loss record of this source and kind.
    pub count: u64,
    /// Records lost since start.
    pub total: u64,
    /// Why, for decode failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Serializes a time as RFC 3339 (`ts` fields of every record).
pub(crate) fn rfc3339<S: Serializer>(
    time: &OffsetDateTime,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let text = time.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
    serializer.serialize_str(&text)
}

/// Reads an RFC 3339 time.
pub(crate) fn from_rfc3339<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<OffsetDateTime, D::Error> {
    let text = String::deserialize(deserializer)?;
    OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_common_keys_and_the_kind_fields() {
        let event = Event {
            time: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap(),
            ktime_ns: 42,
            process: ProcessFields {
                pid: Some(10),
                tid: Some(11),
                ppid: Some(1),
                uid: Some(0),
                gid: Some(0),
                ns_pid: None,
                comm: Some("sh".into()),
            },
            cgroup_id: Some(7),
            container: None,
            pod: None,
            ancestry: Vec::new(),
            lineage: None,
            body: Body::Exec(Exec {
                filename: "/bin/sh".into(),
                argv: vec!["sh".into(), "-c".into(), "true".into()],
                argv_truncated: false,
                filename_truncated: false,
                tty: false,
                parent_cgroup_id: None,
                fileless: false,
                stdin_socket: false,
                stdout_socket: false,
                deleted: false,
            }),
        };
        let value: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["kind"], "exec");
        assert_eq!(value["ts"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(value["pid"], 10);
        assert_eq!(value["ppid"], 1);
        assert_eq!(value["cgroup_id"], 7);
        assert_eq!(value["comm"], "sh");
        assert_eq!(value["argv"][1], "-c");
        assert_eq!(value["filename"], "/bin/sh");
        assert!(value.get("pod").is_none());
        let back: Event = serde_json::from_value(value).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn a_syscall_has_its_kind_op_tags_and_only_the_arguments_it_has() {
        let mut call = Syscall::new(SyscallOperation::Setuid, "setresuid", -1);
        call.tags = vec!["to_root".into(), "refused".into()];
        call.euid = Some(0);
        let event = Event {
            time: OffsetDateTime::UNIX_EPOCH,
            ktime_ns: 1,
            process: ProcessFields {
                pid: Some(10),
                uid: Some(1000),
                ..ProcessFields::default()
            },
            cgroup_id: Some(7),
            container: None,
            pod: None,
            ancestry: Vec::new(),
            lineage: None,
            body: Body::Syscall(call),
        };
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["kind"], "syscall");
        assert_eq!(value["op"], "setuid");
        assert_eq!(value["syscall"], "setresuid");
        assert_eq!(value["result"], -1);
        assert_eq!(value["tags"], serde_json::json!(["to_root", "refused"]));
        assert_eq!(
            (value["uid"].clone(), value["euid"].clone()),
            (1000.into(), 0.into())
        );
        for absent in ["ruid", "suid", "path", "flags", "target_pid", "family"] {
            assert!(value.get(absent).is_none(), "{absent} in {value}");
        }
        let back: Event = serde_json::from_value(value).unwrap();
        assert_eq!(back, event);
        for op in SyscallOperation::ALL {
            assert_eq!(serde_json::to_value(op).unwrap(), op.as_str());
        }
        for op in FileOperation::ALL {
            assert_eq!(serde_json::to_value(op).unwrap(), op.as_str());
        }
    }

    #[test]
    fn records_written_before_the_new_fields_still_read() {
        let exec = r#"{"kind":"exec","ts":"2023-11-14T22:13:20Z","ktime_ns":1,"pid":1,"tid":1,
            "ppid":0,"uid":0,"gid":0,"cgroup_id":1,"comm":"sh","filename":"/bin/sh",
            "argv":["sh"],"argv_truncated":false,"filename_truncated":false}"#;
        let Body::Exec(exec) = serde_json::from_str::<Event>(exec).unwrap().body else {
            panic!("not exec")
        };
        assert!(!exec.fileless && !exec.stdin_socket && !exec.stdout_socket);
        let file = r#"{"kind":"file","ts":"2023-11-14T22:13:20Z","ktime_ns":1,"pid":1,"tid":1,
            "ppid":0,"uid":0,"gid":0,"cgroup_id":1,"comm":"sh","op":"unlink","path":"/x",
            "flags":0,"write":false,"sensitive":false,"read_sensitive":false,"relative":false,
            "path_truncated":false,"suppressed":0}"#;
        let Body::File(file) = serde_json::from_str::<Event>(file).unwrap().body else {
            panic!("not file")
        };
        assert!(!file.log && !file.unresolved && !file.io_uring);
    }

    #[test]
    fn node_level_records_carry_null_process_keys() {
        let event = Event {
            time: OffsetDateTime::UNIX_EPOCH,
            ktime_ns: 0,
            process: ProcessFields::default(),
            cgroup_id: Some(9),
            container: None,
            pod: None,
            ancestry: Vec::new(),
            lineage: None,
            body: Body::Egress(Egress {
                bytes: 100,
                packets: 2,
                interval_ms: 1000,
                total_bytes: 100,
            }),
        };
        let value: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["kind"], "egress");
        assert!(value["pid"].is_null() && value.get("pid").is_some());
        assert_eq!(value["bytes"], 100);
        let back: Event = serde_json::from_value(value).unwrap();
        assert_eq!(back, event);
    }
}
