//! Wire types shared by the eBPF programs (`detector-ebpf`) and the daemon (`detector`).
//!
//! Everything here is `#[repr(C)]` with fixed-width integers and explicit padding, so that the
//! kernel and user space agree byte for byte. Each type carries a size assertion; a change in
//! layout is a compile error on both sides. Flags are `u32`, never `bool`.
//!
//! Every record in the ring buffer starts with an [`EventHeader`]; its `kind` is an
//! [`EventKind`], converted with `TryFrom<u32>` in user space (never transmuted).
#![no_std]

use core::mem::size_of;

/// Ring buffer carrying every event record from the kernel.
pub const MAP_EVENTS: &str = "EVENTS";
/// LPM trie classifying path prefixes ([`PathClassData`] -> [`path_class`] bits).
pub const MAP_PATH_CLASS: &str = "PATH_CLASS";
/// LRU map suppressing repeated write-opens of one file by one cgroup ([`DedupKey`] -> [`DedupValue`]).
pub const MAP_WRITE_DEDUP: &str = "WRITE_DEDUP";
/// Cgroup ids (cgroup2 inode numbers) whose descendants are watched in `containers` mode.
pub const MAP_WATCH_ROOTS: &str = "WATCH_ROOTS";
/// Cgroup ids at levels 1 and 2 that user space classified as the node's own (not container
/// roots) in `containers` mode. A cgroup at those levels in neither this map nor
/// [`MAP_WATCH_ROOTS`] was created since the last classification and is watched until it is
/// classified, so that a new container root's first containers are never missed.
pub const MAP_WATCH_KNOWN: &str = "WATCH_KNOWN";
/// Entries of [`MAP_WATCH_KNOWN`] at most.
pub const WATCH_KNOWN_MAX: u32 = 8192;
/// Deepest level of a container root (`system.slice/docker-<id>.scope`).
pub const WATCH_ROOT_MAX_LEVEL: u32 = 2;
/// LRU cache of the watch decision per cgroup id ([`WatchDecision`]).
pub const MAP_WATCH_CACHE: &str = "WATCH_CACHE";
/// Per-CPU egress counters per cgroup id ([`TrafficCounters`]).
pub const MAP_EGRESS: &str = "EGRESS";
/// Per-CPU counters indexed by [`Stat`].
pub const MAP_STATS: &str = "STATS";
/// Cgroup ids under network quarantine: connects from them (or their descendants) fail with
/// `EPERM`, their packets are dropped both ways.
pub const MAP_QUARANTINE: &str = "QUARANTINE";
/// Entries of [`MAP_QUARANTINE`]: cgroups cut off at once.
pub const QUARANTINE_MAX_ENTRIES: u32 = 4096;
/// One-entry array holding the number of entries in [`MAP_QUARANTINE`], so that programs skip
/// the lookups while nothing is quarantined.
pub const MAP_QUARANTINE_ACTIVE: &str = "QUARANTINE_ACTIVE";

/// Global: bytes waiting in [`MAP_EVENTS`] from which a record wakes the reader (`u64`); below,
/// records are submitted without a wakeup and the reader drains them on its own tick
/// ([`RING_DRAIN_INTERVAL_MS`]). 0 wakes the reader for every record.
pub const GLOBAL_WAKEUP_BYTES: &str = "WAKEUP_BYTES";
/// How often the reader drains the ring buffer without being woken, in milliseconds: the most a
/// record waits below the wakeup threshold.
pub const RING_DRAIN_INTERVAL_MS: u64 = 5;

/// Global: tgid of the daemon, whose own activity is never reported.
pub const GLOBAL_DAEMON_TGID: &str = "DAEMON_TGID";
/// Global: [`WatchMode`] as `u32`.
pub const GLOBAL_WATCH_MODE: &str = "WATCH_MODE";
/// Global: repeat-suppression window for write-opens, in nanoseconds (0 disables suppression).
pub const GLOBAL_DEDUP_WINDOW_NS: &str = "DEDUP_WINDOW_NS";
/// One-entry array holding the watch generation; user space bumps it when [`MAP_WATCH_ROOTS`]
/// changes, which invalidates every [`MAP_WATCH_CACHE`] entry decided before.
pub const MAP_WATCH_GENERATION: &str = "WATCH_GENERATION";
/// Per-CPU: the last task seen at syscall exit on this CPU (see [`TaskCacheEntry`]).
pub const MAP_TASK_CACHE: &str = "TASK_CACHE";
/// Global (`.bss`): thread exits counted since load; an entry of [`MAP_TASK_CACHE`] filled
/// before the latest exit is not used.
pub const GLOBAL_TASK_EXITS: &str = "TASK_EXITS";
/// Global: the first-bytes prefilter for read-only opens ([`ReadPrefilter`]).
pub const GLOBAL_READ_PREFILTER: &str = "READ_PREFILTER";
/// Program array `sys_exit` tail-calls for path operations, opens it could not resolve and
/// the other system calls it reports, indexed by position in [`PATH_OP_PROGRAMS`].
pub const MAP_PATH_OPS: &str = "PATH_OPS";
/// Slot of [`MAP_PATH_OPS`] for unlink, chmod and truncate.
pub const PATH_OP_UNLINK_CHMOD: u32 = 0;
/// Slot of [`MAP_PATH_OPS`] for rename, link and symlink.
pub const PATH_OP_RENAME: u32 = 1;
/// Slot of [`MAP_PATH_OPS`] for opens reported with the path as passed: failed ones with
/// write intent, and those whose file the kernel could not resolve within its bounds.
pub const PATH_OP_FAILED_OPEN: u32 = 2;
/// Slot of [`MAP_PATH_OPS`] for the system calls of [`SyscallOp`].
pub const PATH_OP_SYSCALL: u32 = 3;
/// Slot of [`MAP_PATH_OPS`] for opens that may be reported: with write intent, or read-only
/// past the read-sensitive prefilter (their path resolved and classified).
pub const PATH_OP_OPEN: u32 = 4;
/// The programs of [`MAP_PATH_OPS`], by slot: loaded on `sys_exit`, never attached.
pub const PATH_OP_PROGRAMS: [&str; 5] = [
    "sys_exit_path_op",
    "sys_exit_rename",
    "sys_exit_as_passed",
    "sys_exit_syscall",
    "sys_exit_open",
];
/// Global: kernel structure offsets read from BTF in user space ([`KernelOffsets`]).
pub const GLOBAL_OFFSETS: &str = "OFFSETS";

/// Maximum bytes of a path copied from a syscall argument (including the NUL).
pub const PATH_MAX_BYTES: usize = 256;
/// Maximum bytes of an executable's filename.
pub const FILENAME_MAX_BYTES: usize = 256;
/// Maximum bytes of the NUL-separated argument vector of an exec.
pub const ARGS_MAX_BYTES: usize = 2048;
/// Bytes of a path compared against [`MAP_PATH_CLASS`]; prefixes must be shorter.
pub const PATH_CLASS_KEY_BYTES: usize = 64;
/// Length of a task's `comm`.
pub const COMM_LEN: usize = 16;
/// Maximum number of components of a path resolved in the kernel (mount crossings count as
/// one); deeper paths are counted in [`Stat::UnresolvedPaths`].
pub const PATH_MAX_COMPONENTS: usize = 64;
/// Maximum number of mounts crossed while resolving a path.
pub const PATH_MAX_MOUNTS: usize = 8;
/// Maximum number of cgroup levels walked when deciding whether a cgroup is watched.
pub const WATCH_MAX_DEPTH: u32 = 8;

/// Kinds of record in the ring buffer.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A successful exec ([`ExecEvent`]).
    Exec = 1,
    /// A thread-group leader exited ([`ExitEvent`]).
    Exit = 2,
    /// A file open, unlink or chmod of interest ([`FileEvent`]).
    File = 3,
    /// A rename of interest ([`RenameEvent`]).
    Rename = 4,
    /// An outbound connect ([`ConnectEvent`]).
    Connect = 5,
    /// A system call of interest other than file and network I/O: ptrace, raw sockets,
    /// mounts and namespaces, fileless code, module and BPF loads, privilege changes, a
    /// socket onto standard I/O, io_uring set-up, device nodes ([`SyscallEvent`]).
    Syscall = 6,
}

impl TryFrom<u32> for EventKind {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Ok(match value {
            1 => Self::Exec,
            2 => Self::Exit,
            3 => Self::File,
            4 => Self::Rename,
            5 => Self::Connect,
            6 => Self::Syscall,
            other => return Err(other),
        })
    }
}

/// Which cgroups the kernel programs report on.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchMode {
    /// Every task on the node, except the daemon itself.
    All = 0,
    /// Only tasks in a cgroup below one of [`MAP_WATCH_ROOTS`].
    Containers = 1,
}

/// Indices into [`MAP_STATS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Exec records lost because the ring buffer was full.
    LostExec = 0,
    /// Exit records lost because the ring buffer was full.
    LostExit = 1,
    /// File records lost because the ring buffer was full.
    LostFile = 2,
    /// Rename records lost because the ring buffer was full.
    LostRename = 3,
    /// Connect records lost because the ring buffer was full.
    LostConnect = 4,
    /// Write-opens suppressed as repeats within the dedup window (counted, reported later).
    SuppressedWrites = 5,
    /// Kernel reads (user or kernel memory) that failed; the record went out with what was read.
    ReadErrors = 6,
    /// Packets of quarantined cgroups dropped (egress and ingress).
    QuarantineDrops = 7,
    /// Connects of quarantined cgroups refused.
    QuarantineDenies = 8,
    /// Opened files whose path could not be resolved in the kernel (deeper than
    /// [`PATH_MAX_COMPONENTS`] components or mounts, or unreadable): read-only opens among them
    /// were not checked against the read-sensitive prefixes.
    UnresolvedPaths = 9,
    /// Tail calls into the programs of [`MAP_PATH_OPS`] that did not happen (an empty slot):
    /// unlink, chmod, rename or failed write-opens not looked at.
    TailCallFailures = 10,
    /// Syscall records lost because the ring buffer was full.
    LostSyscall = 11,
}

/// Number of entries in [`MAP_STATS`].
pub const STAT_COUNT: u32 = 12;

impl Stat {
    /// The loss counter for records of `kind`.
    pub const fn lost(kind: EventKind) -> Self {
        match kind {
            EventKind::Exec => Self::LostExec,
            EventKind::Exit => Self::LostExit,
            EventKind::File => Self::LostFile,
            EventKind::Rename => Self::LostRename,
            EventKind::Connect => Self::LostConnect,
            EventKind::Syscall => Self::LostSyscall,
        }
    }
}

/// Bits of [`EventHeader::flags`].
pub mod header_flags {
    /// The parent tgid could not be read.
    pub const PPID_UNKNOWN: u32 = 1 << 0;
}

/// Header common to every record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// [`header_flags`] bits.
    pub flags: u32,
    /// `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns`).
    pub ktime_ns: u64,
    /// cgroup2 id (inode number of the cgroup directory) of the task.
    pub cgroup_id: u64,
    /// Thread id.
    pub pid: u32,
    /// Thread-group id (the process id seen by user space).
    pub tgid: u32,
    /// Thread-group id of the real parent.
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Thread-group id in the task's own pid namespace (what the process itself and a `/proc`
    /// mounted in its namespace call it); 0 when it could not be read.
    pub ns_tgid: u32,
    /// Task command name, NUL padded.
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<EventHeader>() == 64);

/// Bits of [`ExecEvent::flags`].
pub mod exec_flags {
    /// The argument vector was longer than [`super::ARGS_MAX_BYTES`].
    pub const ARGS_TRUNCATED: u32 = 1 << 0;
    /// The filename was longer than [`super::FILENAME_MAX_BYTES`].
    pub const FILENAME_TRUNCATED: u32 = 1 << 1;
    /// The argument vector could not be read.
    pub const ARGS_UNREADABLE: u32 = 1 << 2;
    /// The process has a controlling terminal (`signal_struct::tty` is set): an interactive
    /// session.
    pub const TTY: u32 = 1 << 3;
    /// The executable is a file of a kernel-internal mount (a memfd): fileless execution,
    /// nothing on any filesystem.
    pub const FILELESS: u32 = 1 << 4;
    /// Descriptor 0 of the new program is an `AF_INET`/`AF_INET6` socket.
    pub const STDIN_SOCKET: u32 = 1 << 5;
    /// Descriptor 1 of the new program is an `AF_INET`/`AF_INET6` socket.
    pub const STDOUT_SOCKET: u32 = 1 << 6;
    /// The executable was unlinked before (or while) it was executed: its link count is 0
    /// (run through `/proc/self/fd/N` or `execveat`).
    pub const DELETED: u32 = 1 << 7;
}

/// A successful exec, taken at `sched_process_exec`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    /// Common header.
    pub header: EventHeader,
    /// [`exec_flags`] bits.
    pub flags: u32,
    /// Bytes of `filename` used, without the NUL.
    pub filename_len: u32,
    /// Bytes of `args` used (NUL-separated arguments).
    pub args_len: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// cgroup2 id of the real parent at the exec (0: unknown): a process forked inside its
    /// container's cgroup, or started there by the runtime from outside.
    pub parent_cgroup_id: u64,
    /// Path given to exec, as the kernel saw it (`linux_binprm::filename`).
    pub filename: [u8; FILENAME_MAX_BYTES],
    /// Argument vector, each argument NUL terminated.
    pub args: [u8; ARGS_MAX_BYTES],
}
const _: () = assert!(size_of::<ExecEvent>() == 64 + 24 + FILENAME_MAX_BYTES + ARGS_MAX_BYTES);

/// A thread-group leader exiting.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    /// Common header.
    pub header: EventHeader,
    /// `task_struct::exit_code`: exit status in bits 8..16, terminating signal in bits 0..7.
    pub exit_code: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<ExitEvent>() == 72);

/// File operations reported in [`FileEvent::op`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOp {
    /// `open`, `openat`, `openat2` or `creat`.
    Open = 1,
    /// `unlink` or `unlinkat`.
    Unlink = 2,
    /// `chmod`, `fchmodat` or `fchmodat2`.
    Chmod = 3,
    /// `rename`, `renameat` or `renameat2` ([`RenameEvent`]).
    Rename = 4,
    /// `truncate` ([`FileEvent`]).
    Truncate = 5,
    /// `link` or `linkat` ([`RenameEvent`]: `file.path` the existing file, `target` the new
    /// name).
    Link = 6,
    /// `symlink` or `symlinkat` ([`RenameEvent`]: `file.path` what the link points to, as
    /// given, `target` the link).
    Symlink = 7,
}

impl TryFrom<u32> for FileOp {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Ok(match value {
            1 => Self::Open,
            2 => Self::Unlink,
            3 => Self::Chmod,
            4 => Self::Rename,
            5 => Self::Truncate,
            6 => Self::Link,
            7 => Self::Symlink,
            other => return Err(other),
        })
    }
}

/// Bits stored in [`MAP_PATH_CLASS`] and reported in [`FileEvent::class`].
pub mod path_class {
    /// A write here is flagged sensitive (`/proc`, `/dev`, `/etc`, binary and library dirs).
    pub const SENSITIVE_WRITE: u32 = 1 << 0;
    /// Any open here, read-only too, is reported (secrets, ssh keys, kubelet state).
    pub const READ_SENSITIVE: u32 = 1 << 1;
    /// Never reported (harmless device nodes such as `/dev/null`).
    pub const EXCLUDED: u32 = 1 << 2;
    /// Logs and shell history: unlinking, renaming or truncating one is reported (clearing
    /// tracks). Names ending in `_history` anywhere (`.bash_history`, `.python_history`) get
    /// it in the kernel without an entry.
    pub const LOG: u32 = 1 << 3;
}

/// Bits of [`FileEvent::flags`].
pub mod file_flags {
    /// The open asked for write, create, truncate or append.
    pub const WRITE_INTENT: u32 = 1 << 0;
    /// The path was relative to a directory fd (see [`super::FileEvent::dirfd`]).
    pub const RELATIVE: u32 = 1 << 1;
    /// The path was longer than [`super::PATH_MAX_BYTES`].
    pub const PATH_TRUNCATED: u32 = 1 << 2;
    /// The path was resolved in the kernel from the opened file's own dentries and mounts (as
    /// the process sees it from its root), not copied from the syscall argument.
    pub const RESOLVED: u32 = 1 << 3;
    /// The resolved file lies outside the process's root (another mount namespace, reached
    /// through `/proc/<pid>/root`, or above a chroot); the path is absolute in the file's own
    /// mount namespace.
    pub const OTHER_ROOT: u32 = 1 << 4;
    /// A relative path of the record (`path`, or a rename's target) was joined in the kernel
    /// to the directory it is relative to (the directory fd's file, or the working
    /// directory, resolved as an opened file's path is): `<directory>/<argument>`, with the
    /// argument as passed (`.`, `..` and symlinks in it not followed).
    pub const JOINED: u32 = 1 << 5;
    /// The path (or a rename's target) holds a `.` or `..` component: an unlink, chmod or
    /// rename reported whatever its class, or a failed open even when excluded by its bytes,
    /// for user space to normalize and classify.
    pub const DOT_COMPONENTS: u32 = 1 << 6;
    /// The kernel could not resolve the path within its bounds (deeper than
    /// [`super::PATH_MAX_COMPONENTS`] components or [`super::PATH_MAX_MOUNTS`] mounts, or a
    /// relative path whose directory it could not resolve): `path` is the argument as passed,
    /// and the class is conservative (a write counts as a sensitive write, a read as a
    /// read-sensitive one, unless the argument itself is absolute and classified).
    pub const UNRESOLVED: u32 = 1 << 7;
    /// The operation was submitted through an io_uring ring, not made by a system call.
    pub const IO_URING: u32 = 1 << 8;
}

/// An open with write intent, an open of a read-sensitive path, or an unlink/chmod of a
/// sensitive path, taken at syscall exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FileEvent {
    /// Common header.
    pub header: EventHeader,
    /// A [`FileOp`] as `u32`.
    pub op: u32,
    /// [`file_flags`] bits.
    pub flags: u32,
    /// [`path_class`] bits of the longest matching prefix.
    pub class: u32,
    /// `open` flags (`O_*`), or the mode for chmod.
    pub open_flags: u32,
    /// Directory fd the path is relative to (`AT_FDCWD` = -100).
    pub dirfd: i32,
    /// Bytes of `path` used, without the NUL.
    pub path_len: u32,
    /// Identical write-opens suppressed in the kernel since the previous reported one.
    pub suppressed: u32,
    /// What the syscall returned: a descriptor (opens) or 0 on success, `-errno` on failure.
    pub result: i32,
    /// The resolved path ([`file_flags::RESOLVED`]), or the path as passed to the syscall.
    pub path: [u8; PATH_MAX_BYTES],
}
const _: () = assert!(size_of::<FileEvent>() == 64 + 32 + PATH_MAX_BYTES);

impl FileEvent {
    /// Bytes before `path`. A file record is sent cut after its path's NUL, rounded up to 8
    /// bytes: most paths are far shorter than `PATH_MAX_BYTES`, and a write-open flood fits
    /// about twice as many records in the ring buffer.
    pub const FIXED_BYTES: usize = 64 + 32;

    /// Bytes of a record carrying a path of `path_len` bytes (without the NUL).
    pub const fn record_bytes(path_len: u32) -> usize {
        let used = Self::FIXED_BYTES + (path_len as usize & (PATH_MAX_BYTES - 1)) + 1;
        (used + 7) & !7
    }
}

/// A rename where either side is a sensitive path.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RenameEvent {
    /// The source path, as a [`FileEvent`] with `op` = [`FileOp::Rename`].
    pub file: FileEvent,
    /// Bytes of `target` used, without the NUL.
    pub target_len: u32,
    /// Directory fd the target is relative to.
    pub target_dirfd: i32,
    /// Target path as passed to the syscall.
    pub target: [u8; PATH_MAX_BYTES],
}
const _: () = assert!(size_of::<RenameEvent>() == size_of::<FileEvent>() + 8 + PATH_MAX_BYTES);

/// An outbound connect, taken at the cgroup `connect4`/`connect6` hooks.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectEvent {
    /// Common header.
    pub header: EventHeader,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u32,
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: u32,
    /// Destination port, host byte order.
    pub dport: u32,
    /// 1 when the connect was refused because the cgroup is quarantined.
    pub blocked: u32,
    /// Destination address in network byte order; IPv4 in the first four bytes.
    pub daddr: [u8; 16],
}
const _: () = assert!(size_of::<ConnectEvent>() == 64 + 16 + 16);

/// System calls reported in [`SyscallEvent::op`], and what each puts in `args` and `text`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallOp {
    /// `ptrace` `PTRACE_ATTACH`, `PTRACE_SEIZE` or `PTRACE_TRACEME`: args request, pid.
    Ptrace = 1,
    /// `socket` of `AF_PACKET`, or an `AF_INET`/`AF_INET6` one of type `SOCK_RAW` or
    /// `SOCK_PACKET`: args family, type, protocol.
    Socket = 2,
    /// `mount`: args flags; text the target, aux the filesystem type. Also the mount API's
    /// `fsopen` (aux the filesystem type), `open_tree` (text the tree's path) and
    /// `move_mount` (text the target), with no flags.
    Mount = 3,
    /// `umount2`: args flags; text the target.
    Umount = 4,
    /// `unshare`: args flags.
    Unshare = 5,
    /// `setns`: args fd, nstype.
    Setns = 6,
    /// `pivot_root`: text the new root.
    PivotRoot = 7,
    /// `memfd_create`: args flags; text the name.
    MemfdCreate = 8,
    /// `init_module` (args 0, length) or `finit_module` (args 1, fd, flags).
    ModuleLoad = 9,
    /// `bpf(BPF_PROG_LOAD)`: args command, program type.
    BpfProgLoad = 10,
    /// `setuid`, `setreuid` or `setresuid` asking for uid 0: args the requested real,
    /// effective and saved uid (`u32::MAX`: unchanged).
    Setuid = 11,
    /// `dup2`/`dup3` of an `AF_INET`/`AF_INET6` socket onto descriptor 0, 1 or 2: args old
    /// fd, new fd, the socket's family.
    DupSocket = 12,
    /// `io_uring_setup`: args entries, flags.
    IoUringSetup = 13,
    /// `mknod`/`mknodat` of a block or character device: args mode, dev; text the path as
    /// passed.
    Mknod = 14,
}

impl TryFrom<u32> for SyscallOp {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Ok(match value {
            1 => Self::Ptrace,
            2 => Self::Socket,
            3 => Self::Mount,
            4 => Self::Umount,
            5 => Self::Unshare,
            6 => Self::Setns,
            7 => Self::PivotRoot,
            8 => Self::MemfdCreate,
            9 => Self::ModuleLoad,
            10 => Self::BpfProgLoad,
            11 => Self::Setuid,
            12 => Self::DupSocket,
            13 => Self::IoUringSetup,
            14 => Self::Mknod,
            other => return Err(other),
        })
    }
}

/// Maximum bytes of [`SyscallEvent::text`].
pub const SYSCALL_TEXT_BYTES: usize = 256;
/// Maximum bytes of [`SyscallEvent::aux`].
pub const SYSCALL_AUX_BYTES: usize = 32;

/// A system call of interest ([`SyscallOp`]), taken at syscall exit, refused ones too.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallEvent {
    /// Common header.
    pub header: EventHeader,
    /// A [`SyscallOp`] as `u32`.
    pub op: u32,
    /// The system call number (of the architecture the programs run on).
    pub nr: u32,
    /// What the call returned (`-errno` on failure).
    pub result: i64,
    /// Arguments, as [`SyscallOp`] lists for each operation.
    pub args: [u64; 4],
    /// Bytes of `text` used, without the NUL.
    pub text_len: u32,
    /// Bytes of `aux` used, without the NUL.
    pub aux_len: u32,
    /// A string argument (a path or a name), as passed.
    pub text: [u8; SYSCALL_TEXT_BYTES],
    /// A second, short string argument.
    pub aux: [u8; SYSCALL_AUX_BYTES],
}
const _: () =
    assert!(size_of::<SyscallEvent>() == 64 + 48 + 8 + SYSCALL_TEXT_BYTES + SYSCALL_AUX_BYTES);

/// Linux ABI values the programs filter on and user space decodes, in one place for both.
pub mod linux {
    /// `AF_INET`.
    pub const AF_INET: u64 = 2;
    /// `AF_INET6`.
    pub const AF_INET6: u64 = 10;
    /// `AF_PACKET`.
    pub const AF_PACKET: u64 = 17;
    /// The type bits of `socket`'s type argument (the rest are `SOCK_NONBLOCK` and
    /// `SOCK_CLOEXEC`).
    pub const SOCK_TYPE_MASK: u64 = 0xf;
    /// `SOCK_RAW`.
    pub const SOCK_RAW: u64 = 3;
    /// `SOCK_PACKET`.
    pub const SOCK_PACKET: u64 = 10;
    /// `S_IFMT`: the file type bits of a mode.
    pub const S_IFMT: u64 = 0o170_000;
    /// `S_IFSOCK`.
    pub const S_IFSOCK: u64 = 0o140_000;
    /// `S_IFBLK`.
    pub const S_IFBLK: u64 = 0o060_000;
    /// `S_IFCHR`.
    pub const S_IFCHR: u64 = 0o020_000;
    /// `S_ISUID | S_ISGID`.
    pub const SET_ID_BITS: u32 = 0o6000;
    /// `O_TRUNC`.
    pub const O_TRUNC: u32 = 0o1000;
}

/// Data of a [`MAP_PATH_CLASS`] LPM trie key: the first path bytes. A prefix entry covers
/// every path starting with it; an entry whose bytes end with the NUL matches one path exactly.
pub type PathClassData = [u8; PATH_CLASS_KEY_BYTES];

/// The first eight bytes of a path component, as a masked native-endian word.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameWord {
    /// The name's bytes, zero past its length.
    pub value: u64,
    /// `0xff` for each byte that counts; 0 matches any name, and a missing component.
    pub mask: u64,
    /// The name's exact length; 0 when the name is a prefix (an entry ending in `*`) or any.
    pub len: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<NameWord>() == 24);

/// The top components of a read-sensitive entry, nearest the root first: `/var/run/secrets`
/// gives `var`, `run`, `secrets` (exact), `/etc/ssh/ssh_host_*` gives `etc`, `ssh` and the
/// prefix `ssh_host`, `/home/*/.ssh` gives `home`, any, `.ssh`. (Three: a fourth made the
/// climb's exits differ enough to take `sys_exit` past the verifier's limit.) A word with mask 0 matches any
/// name, and a missing component.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TopComponents {
    /// The first [`TOP_COMPONENTS`] components below `/`.
    pub words: [NameWord; TOP_COMPONENTS],
    /// The file's own name, for a pattern deeper than [`TOP_COMPONENTS`] components whose
    /// components between are `*` (`/proc/*/task/*/environ`); mask 0 otherwise.
    pub leaf: NameWord,
    /// Non-zero for a pattern (an entry with a `*` component): the prefilter's match is the
    /// decision, since the prefix trie cannot hold it. Its literal components are at most
    /// eight bytes, compared whole.
    pub decides: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<TopComponents>() == 24 * (TOP_COMPONENTS + 1) + 8);

/// Components of a path compared by the [`ReadPrefilter`], from the root.
pub const TOP_COMPONENTS: usize = 3;

/// Slots of [`ReadPrefilter`].
pub const READ_PREFILTER_SLOTS: usize = 24;

/// Lets a read-only open skip building its path when the file's top path components cannot
/// start any read-sensitive entry (most opens on a node): the kernel compares them as it
/// climbs from the file to the root, with plain loads. User space computes it from the same
/// entries as [`MAP_PATH_CLASS`], which decides exactly for the opens that pass, except for
/// patterns (`/proc/*/environ`), which the prefilter decides itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadPrefilter {
    /// Entries in use; 0 means no read-sensitive entry (read-only opens are never looked at),
    /// [`ReadPrefilter::DISABLED`] sends every read-only open to classification.
    pub len: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// One bit per first component of an entry that names it whole, at
    /// [`ReadPrefilter::exact_bit`]: most paths are turned away by one bit test.
    pub first_exact: u64,
    /// One bit per first byte of an entry whose first component is a prefix (`/sec*`), at
    /// [`ReadPrefilter::prefix_bit`]; all ones when one matches any first component (`/*`).
    pub first_prefix: u64,
    /// The entries.
    pub entries: [TopComponents; READ_PREFILTER_SLOTS],
}
const _: () =
    assert!(size_of::<ReadPrefilter>() == 24 + size_of::<TopComponents>() * READ_PREFILTER_SLOTS);

impl ReadPrefilter {
    /// `len` value that disables the prefilter.
    pub const DISABLED: u32 = u32::MAX;

    /// The bit of [`ReadPrefilter::first_exact`] for a first component of `len` bytes starting
    /// with `byte`.
    #[inline(always)]
    pub const fn exact_bit(byte: u8, len: u32) -> u32 {
        (byte as u32 ^ (len << 3)) & 63
    }

    /// The bit of [`ReadPrefilter::first_prefix`] for a first component starting with `byte`.
    #[inline(always)]
    pub const fn prefix_bit(byte: u8) -> u32 {
        byte as u32 & 63
    }
}

/// Key of [`MAP_WRITE_DEDUP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DedupKey {
    /// cgroup id of the writer.
    pub cgroup_id: u64,
    /// FNV-1a hash of the path bytes.
    pub path_hash: u64,
}
const _: () = assert!(size_of::<DedupKey>() == 16);

/// Value of [`MAP_WRITE_DEDUP`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DedupValue {
    /// Boot-time ns of the last reported write-open.
    pub last_reported_ns: u64,
    /// Repeats suppressed since then.
    pub suppressed: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<DedupValue>() == 16);

/// Value of [`MAP_WATCH_CACHE`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WatchDecision {
    /// 1 when watched.
    pub watched: u32,
    /// Value of the watch generation when decided.
    pub generation: u32,
}
const _: () = assert!(size_of::<WatchDecision>() == 8);

/// Value of [`MAP_EGRESS`] (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    /// Bytes at the IP layer.
    pub bytes: u64,
    /// Packets.
    pub packets: u64,
}
const _: () = assert!(size_of::<TrafficCounters>() == 16);

/// Kernel structure member offsets, read from `/sys/kernel/btf/vmlinux` by user space and
/// handed to the programs as a global (Rust eBPF has no CO-RE relocations for these).
///
/// The programs read them one field at a time from the frozen read-only section, so the verifier
/// sees each as a constant and checks typed (BTF) loads at that offset against the kernel's own
/// structure layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct::real_parent`.
    pub task_real_parent: u32,
    /// `task_struct::tgid`.
    pub task_tgid: u32,
    /// `task_struct::mm`.
    pub task_mm: u32,
    /// `task_struct::exit_code`.
    pub task_exit_code: u32,
    /// `mm_struct::arg_start`.
    pub mm_arg_start: u32,
    /// `mm_struct::arg_end`.
    pub mm_arg_end: u32,
    /// `linux_binprm::filename`.
    pub bprm_filename: u32,
    /// `task_struct::files`.
    pub task_files: u32,
    /// `task_struct::fs`.
    pub task_fs: u32,
    /// `task_struct::cgroups`.
    pub task_cgroups: u32,
    /// `css_set::dfl_cgrp`.
    pub css_set_dfl_cgrp: u32,
    /// `cgroup::kn`.
    pub cgroup_kn: u32,
    /// `kernfs_node::id`.
    pub kernfs_node_id: u32,
    /// `files_struct::fdt`.
    pub files_fdt: u32,
    /// `fdtable::max_fds`.
    pub fdtable_max_fds: u32,
    /// `fdtable::fd`.
    pub fdtable_fd: u32,
    /// `file::f_path`.
    pub file_path: u32,
    /// `fs_struct::root`.
    pub fs_root: u32,
    /// `fs_struct::pwd`.
    pub fs_pwd: u32,
    /// `path::mnt`.
    pub path_mnt: u32,
    /// `path::dentry`.
    pub path_dentry: u32,
    /// `dentry::d_parent`.
    pub dentry_parent: u32,
    /// `dentry::d_name` (a `struct qstr`).
    pub dentry_name: u32,
    /// `dentry::d_shortname` (`d_iname` before Linux 6.14): where short names live.
    pub dentry_inline_name: u32,
    /// `qstr::len`.
    pub qstr_len: u32,
    /// `qstr::name`.
    pub qstr_name: u32,
    /// `vfsmount::mnt_root`.
    pub vfsmount_root: u32,
    /// `vfsmount::mnt_flags`.
    pub vfsmount_flags: u32,
    /// `mount::mnt`: where the `vfsmount` sits in its `struct mount`.
    pub mount_mnt: u32,
    /// `mount::mnt_parent`.
    pub mount_parent: u32,
    /// `mount::mnt_mountpoint`.
    pub mount_mountpoint: u32,
    /// `task_struct::group_leader`.
    pub task_group_leader: u32,
    /// `task_struct::thread_pid`.
    pub task_thread_pid: u32,
    /// `pid::level`: depth of the task's own pid namespace.
    pub pid_level: u32,
    /// `pid::numbers`: one `struct upid` per namespace level.
    pub pid_numbers: u32,
    /// `sizeof(struct upid)`.
    pub upid_size: u32,
    /// `upid::nr`.
    pub upid_nr: u32,
    /// `task_struct::signal`.
    pub task_signal: u32,
    /// `signal_struct::tty`.
    pub signal_tty: u32,
    /// `linux_binprm::file`.
    pub bprm_file: u32,
    /// `file::f_inode`.
    pub file_inode: u32,
    /// `inode::i_mode`.
    pub inode_mode: u32,
    /// `inode::i_nlink`.
    pub inode_nlink: u32,
    /// `file::private_data` (a socket file's `struct socket`).
    pub file_private_data: u32,
    /// `socket::sk`.
    pub socket_sk: u32,
    /// `sock_common::skc_family` (a `struct sock` starts with its `sock_common`).
    pub sock_family: u32,
    /// The size of `dentry::d_shortname` (`DNAME_INLINE_LEN`): a name this long or longer
    /// lives outside the dentry, a shorter one always inside.
    pub dentry_inline_len: u32,
}
const _: () = assert!(size_of::<KernelOffsets>() == 188);

/// BTF type ids of the kernel structures the programs cast addresses to with
/// `bpf_rdonly_cast`, read from `/sys/kernel/btf/vmlinux` by user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelTypes {
    /// A structure whose first member is a `struct file *` (`struct kiocb` on every kernel so
    /// far): a descriptor-table slot cast to it reads as a typed file pointer.
    pub file_slot: u32,
    /// `struct mount`.
    pub mount: u32,
    /// `struct vfsmount`.
    pub vfsmount: u32,
    /// `struct dentry`.
    pub dentry: u32,
    /// `struct task_struct`.
    pub task: u32,
}
const _: () = assert!(size_of::<KernelTypes>() == 20);

/// Where the `io_uring_complete` tracepoint keeps what the io_uring program reads, per kernel:
/// read from the tracepoint's BTF prototype and the request's structures by user space
/// (`GLOBAL_IO_URING`). Offsets in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoUringLayout {
    /// Argument of the tracepoint holding the completion's result: an `int res` (Linux 5.19 to
    /// 6.3), or, when [`IoUringLayout::res_in_cqe`] is 1, a `struct io_uring_cqe *` (6.4 on).
    pub res_arg: u32,
    /// 1 when the result is read from the completion entry at [`IoUringLayout::cqe_res`].
    pub res_in_cqe: u32,
    /// `struct io_uring_cqe`'s `res`.
    pub cqe_res: u32,
    /// `struct io_kiocb`'s `opcode` (a byte).
    pub req_opcode: u32,
    /// `struct io_kiocb`'s command area (`cmd`), where an open keeps its `struct io_open`.
    pub req_cmd: u32,
    /// `struct io_open`'s `dfd`.
    pub open_dfd: u32,
    /// `struct io_open`'s `file_slot` (non-zero: a direct descriptor, no file descriptor).
    pub open_file_slot: u32,
    /// `struct io_open`'s `how.flags` (a 64-bit `open_how` member).
    pub open_flags: u32,
}
const _: () = assert!(size_of::<IoUringLayout>() == 32);
/// Global: the `io_uring_complete` layout ([`IoUringLayout`]).
pub const GLOBAL_IO_URING: &str = "IO_URING";
/// io_uring operation codes the io_uring program reports (include/uapi/linux/io_uring.h).
pub mod io_uring_op {
    /// `IORING_OP_OPENAT`.
    pub const OPENAT: u8 = 18;
    /// `IORING_OP_OPENAT2`.
    pub const OPENAT2: u8 = 28;
}

/// An entry of [`MAP_TASK_CACHE`]: the task whose syscall registers are at `regs` (its kernel
/// stack's top, unique among live tasks), valid while no thread has exited since (`exits` is
/// [`GLOBAL_TASK_EXITS`] when it was filled). Zero: empty.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskCacheEntry {
    /// Address of the task's syscall `struct pt_regs`.
    pub regs: u64,
    /// Address of its `struct task_struct`.
    pub task: u64,
    /// Thread exits counted when the entry was filled.
    pub exits: u64,
}
const _: () = assert!(size_of::<TaskCacheEntry>() == 24);

/// Global: [`KernelTypes`].
pub const GLOBAL_KERNEL_TYPES: &str = "KERNEL_TYPES";

/// The helper number of the placeholder call the programs emit for `bpf_rdonly_cast`; user
/// space rewrites each such instruction into the kernel-function call before loading.
pub const KFUNC_RDONLY_CAST_MARKER: u32 = 0x7fff_f001;

/// `MNT_INTERNAL` in `vfsmount::mnt_flags`: a kernel-internal mount (pipes, sockets, anonymous
/// inodes, memfd), whose files have no path in any mount namespace.
pub const MNT_INTERNAL: u32 = 0x4000;

/// FNV-1a 64-bit offset basis, shared so that both sides hash paths the same way.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: every type below is `#[repr(C)]`, made only of integers and integer arrays, with
    // explicit padding fields, so any bit pattern is a valid value and there is no hidden padding.
    unsafe impl aya::Pod for DedupKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DedupValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for WatchDecision {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TrafficCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for IoUringLayout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for KernelTypes {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TaskCacheEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ReadPrefilter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ExecEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ExitEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FileEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for RenameEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnectEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SyscallEvent {}
}
