//! Paths of opened files, resolved in the kernel from the file's own dentries and mounts.
//!
//! At syscall exit an open has produced a `struct file`; its `f_path` names the file the kernel
//! really opened, after relative paths, `..`, symlinks and bind mounts. Climbing from that
//! dentry to the process's root gives the path as the process sees it, without reading user
//! memory: no race with the syscall argument, and no user-access window (on the machines
//! measured a user read cost about 180 ns, a kernel probe read 40, a typed load about one).
//!
//! Every step is a typed load ([`crate::kernel`]): descriptor to file, file to dentry and
//! mount, dentry to parent, mount to the mount it hangs from. A read-only open first climbs
//! keeping only the last two dentries ([`may_be_read_sensitive`]) and compares the path's top
//! two components with the [`ReadPrefilter`]; only a file that passes, and every open with
//! write intent, is climbed again recording each component ([`resolve`]), has its path built
//! (a probe read per component) and classified.

use aya_ebpf::{helpers::generated::bpf_probe_read_kernel_str, macros::map, maps::PerCpuArray};
use detector_common::{
    MNT_INTERNAL, NameWord, PATH_MAX_BYTES, READ_PREFILTER_SLOTS, ReadPrefilter, TOP_COMPONENTS,
    TopComponents,
};

use crate::{
    common::offset,
    kernel::{Btf, Task, dentry_at, file_at, mount_at, vfsmount_at},
};

/// Components a climb records. The typed build takes [`detector_common::PATH_MAX_COMPONENTS`];
/// the `probe-read` build fewer, for older kernels' verifiers (deeper paths are reported with
/// the path as passed, flagged unresolved when it cannot be joined either).
#[cfg(not(feature = "probe-read"))]
pub const MAX_COMPONENTS: usize = detector_common::PATH_MAX_COMPONENTS;
#[cfg(feature = "probe-read")]
pub const MAX_COMPONENTS: usize = 16;
/// Mounts a climb crosses (see [`MAX_COMPONENTS`]).
#[cfg(not(feature = "probe-read"))]
pub const MAX_MOUNTS: usize = detector_common::PATH_MAX_MOUNTS;
#[cfg(feature = "probe-read")]
pub const MAX_MOUNTS: usize = 4;

const ANY: NameWord = NameWord {
    value: 0,
    mask: 0,
    len: 0,
    _pad: 0,
};

/// First-components prefilter for read-only opens, set by user space at load.
#[unsafe(no_mangle)]
static READ_PREFILTER: ReadPrefilter = ReadPrefilter {
    len: ReadPrefilter::DISABLED,
    _pad: 0,
    first_exact: 0,
    first_prefix: 0,
    entries: [TopComponents {
        words: [ANY; TOP_COMPONENTS],
        leaf: ANY,
        decides: 0,
        _pad: 0,
    }; READ_PREFILTER_SLOTS],
};

/// What [`resolve`] found: name pointers and lengths of the path's components, leaf first (for
/// building its string), where the climb ended and how deep it went.
///
/// It lives in per-CPU map memory, written and read back with volatile accesses. The verifier
/// does not track values through map memory, so the climb's many ways out all meet the caller
/// in one state, and the rest of the program is verified once, not once per way out.
#[repr(C)]
pub struct Resolution {
    reached: u32,
    depth: u32,
    fd: i64,
    /// The top dentries and the file's own, found by [`may_be_read_sensitive`].
    top: [u64; TOP_COMPONENTS],
    leaf: u64,
    /// Non-zero when a pattern entry of the prefilter matched: the file is read-sensitive.
    decided: u32,
    _pad: u32,
    /// The names of `top` and `leaf`, as [`compare_entries`] compares them.
    names: [Name; TOP_COMPONENTS + 1],
    name: [u64; MAX_COMPONENTS],
    len: [u32; MAX_COMPONENTS],
}

/// Volatile access to a [`Resolution`] member: the verifier sees what is read back as any
/// value, so states that differ only in it are one.
macro_rules! get {
    ($place:expr) => {
        // SAFETY: this CPU's slot, used by one program run at a time.
        unsafe { core::ptr::read_volatile(&$place) }
    };
}
macro_rules! put {
    ($place:expr, $value:expr) => {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(&mut $place, $value) }
    };
}

#[map(name = "PATH_RESOLUTION")]
static RESOLUTION: PerCpuArray<Resolution> = PerCpuArray::with_max_entries(1, 0);

/// The first bytes and length of a path component, as the prefilter compares them.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Name {
    word: u64,
    len: u32,
    /// Non-zero when the bytes are not known: the prefilter lets the file through.
    unknown: u32,
}

impl Name {
    const NONE: Self = Self {
        word: 0,
        len: 0,
        unknown: 0,
    };

    /// The name of the dentry at `addr` (none for 0). Its first bytes are read from the
    /// dentry's inline store, where every name shorter than the store lives (the dcache
    /// allocates a longer one outside, and a rename only ever moves a long name's pointer or
    /// copies a short name's bytes); a longer one is `unknown` (a typed load cannot follow the
    /// name pointer), which only costs the exact check. The length tells which, so the name
    /// pointer is not read.
    #[inline(always)]
    fn of(addr: u64) -> Self {
        if addr == 0 {
            return Self::NONE;
        }
        if addr == UNKNOWN {
            return Self {
                word: 0,
                len: 0,
                unknown: 1,
            };
        }
        let dentry = dentry_at(addr);
        let qstr = offset!(dentry_name);
        let len = dentry.u32_at(qstr + offset!(qstr_len));
        if len >= offset!(dentry_inline_len) {
            return Self {
                word: 0,
                len,
                unknown: 1,
            };
        }
        let mut word = dentry.u64_at(offset!(dentry_inline_name));
        if len < 8 {
            // Bytes past the name's end are left over from earlier names.
            word &= (1u64 << (len * 8)) - 1;
        }
        Self {
            word,
            len,
            unknown: 0,
        }
    }

    /// Whether the name cannot match `want` and whether it may not, as two values that are
    /// zero when it may (an unknown name may) and when it surely does (any name, or a known
    /// one with the same bytes: a pattern's literal components are at most eight bytes,
    /// compared whole). Arithmetic only, no branch.
    #[inline(always)]
    fn misses(self, want: &NameWord) -> (u64, u64) {
        let len_counts = nonzero(u64::from(want.len)).wrapping_neg();
        let known_miss =
            ((self.word & want.mask) ^ want.value) | (u64::from(self.len ^ want.len) & len_counts);
        let unknown = nonzero(u64::from(self.unknown)).wrapping_neg();
        let any = nonzero(want.mask) ^ 1;
        let may_not = known_miss & !unknown;
        let surely_not = (known_miss | unknown) & any.wrapping_sub(1);
        (may_not, surely_not)
    }
}

/// Where a climb from a file to the root ended.
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// The process's root: the path is the one the process sees.
    Root = 0,
    /// The root of a mount namespace that is not the process's (or of the whole tree above a
    /// chroot): the path is absolute in the file's own namespace.
    OtherRoot = 1,
    /// A kernel-internal mount (pipe, socket, memfd): the file has no path.
    Internal = 2,
    /// More components or mounts than the bounds, or a broken chain.
    Unresolved = 3,
    /// No file behind the descriptor.
    NoFile = 4,
}

impl Reached {
    #[inline(always)]
    fn from_u32(value: u32) -> Self {
        match value {
            0 => Self::Root,
            1 => Self::OtherRoot,
            2 => Self::Internal,
            3 => Self::Unresolved,
            _ => Self::NoFile,
        }
    }
}

/// The file behind descriptor `fd` of `task` (`task->files->fdt->fd[fd]`), typed.
#[inline(always)]
pub fn open_file(task: Task, fd: i64) -> Option<Btf> {
    let fdt = fd_table(task);
    if fd < 0 || fd as u64 >= fdt.u32_at(offset!(fdtable_max_fds)) as u64 {
        return None;
    }
    file_in(fdt, fd)
}

/// The file behind `fd`, a descriptor the current syscall of `task` (the current task) has
/// just returned: [`open_file`] without its bound. The bound is known to hold: the table of a
/// task's own descriptors is replaced only by the task itself (unshare, exec) and otherwise only
/// grows, so an installed descriptor stays below its size. One load less on every read-only
/// open.
#[inline(always)]
pub fn just_opened(task: Task, fd: i64) -> Option<Btf> {
    file_in(fd_table(task), fd)
}

/// `task->files->fdt`.
#[inline(always)]
fn fd_table(task: Task) -> Btf {
    task.0.ptr(offset!(task_files)).ptr(offset!(files_fdt))
}

/// The file in slot `fd` of the descriptor table `fdt`, none when the slot is empty.
#[inline(always)]
fn file_in(fdt: Btf, fd: i64) -> Option<Btf> {
    let file = file_at(fdt.u64_at(offset!(fdtable_fd)) + fd as u64 * 8);
    (file.addr() != 0).then_some(file)
}

/// Resolves the file behind descriptor `fd` of `task` (its current directory for
/// `AT_FDCWD`): climbs from it to the process's root, recording every component and the
/// outcome in this CPU's [`Resolution`], read back with [`Resolved::read`]. Not inlined, so
/// that it is verified once and joins its caller in one state.
#[inline(never)]
pub fn resolve(task: Task, fd: i64) {
    let Some(record) = RESOLUTION.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU slot is used by one program run at a time on its CPU.
    let record = unsafe { &mut *record };
    // The descriptor goes through map memory, so that the bound checks below narrow a copy of
    // its own, not the caller's `ret`, which would split the caller's state.
    put!(record.fd, fd);
    let fd = get!(record.fd);
    put!(record.depth, 0);
    let start = if fd == i64::from(AT_FDCWD) {
        Some(task.0.ptr(offset!(task_fs)).at(offset!(fs_pwd)))
    } else {
        open_file(task, fd).map(|file| file.at(offset!(file_path)))
    };
    let reached = match start {
        Some(path) => climb(task, path, record),
        None => Reached::NoFile,
    };
    put!(record.reached, reached as u32);
}

/// Climbs from `path` (a `struct path`: a file's, or the current directory) to the process's
/// root, recording each component; the number of them is left in `record.depth`.
///
/// The depth lives in `record` (read back as any value to the verifier), so that climbs that
/// went different ways meet in the same state.
#[inline(always)]
fn climb(task: Task, path: Btf, record: &mut Resolution) -> Reached {
    // Offsets used in the loop, read once (each `offset!` is a load).
    let (parent_at, name_at) = (offset!(dentry_parent), offset!(dentry_name));
    let (qstr_name, qstr_len) = (offset!(qstr_name), offset!(qstr_len));
    let root = task.0.ptr(offset!(task_fs)).at(offset!(fs_root));
    let (root_mnt, root_dentry) = (
        root.ptr(offset!(path_mnt)).addr(),
        root.ptr(offset!(path_dentry)).addr(),
    );
    let mut mnt = path.ptr(offset!(path_mnt));
    let mut dentry = path.ptr(offset!(path_dentry));
    if mnt.addr() == 0 || dentry.addr() == 0 {
        return Reached::Unresolved;
    }
    if mnt.u32_at(offset!(vfsmount_flags)) & MNT_INTERNAL != 0 {
        return Reached::Internal;
    }
    let mut mnt_root = mnt.ptr(offset!(vfsmount_root)).addr();
    // A loop over mounts around a loop over the components of one: each way out of the inner
    // loop meets the outer one in the same state. What changes from step to step and is not
    // a pointer being followed (the depth) lives in `record`, and a crossing recasts the
    // parent's `vfsmount`: every step then has one verifier state.
    for _ in 0..=MAX_MOUNTS {
        let mut at_mount_root = false;
        for _ in 0..MAX_COMPONENTS {
            let here = dentry.addr();
            if here == root_dentry && mnt.addr() == root_mnt {
                return Reached::Root;
            }
            if here == mnt_root {
                at_mount_root = true;
                break;
            }
            let parent = dentry.ptr(parent_at);
            if parent.addr() == here || parent.addr() == 0 {
                // A filesystem root that is not its mount's root: a dentry cut off from its
                // tree.
                return Reached::Unresolved;
            }
            let depth = get!(record.depth) as usize;
            if depth >= MAX_COMPONENTS {
                return Reached::Unresolved;
            }
            let qstr = dentry.at(name_at);
            record.name[depth] = qstr.u64_at(qstr_name);
            record.len[depth] = qstr.u32_at(qstr_len);
            put!(record.depth, depth as u32 + 1);
            dentry = parent;
        }
        if !at_mount_root {
            break;
        }
        // The root of this mount: go on from its mountpoint in the mount it hangs from.
        let mount = mount_at(mnt.addr() - offset!(mount_mnt) as u64);
        let parent = mount.ptr(offset!(mount_parent));
        if parent.addr() == mount.addr() {
            // The root mount of a namespace, and not the process's root.
            return Reached::OtherRoot;
        }
        if parent.addr() == 0 {
            break;
        }
        dentry = mount.ptr(offset!(mount_mountpoint));
        mnt = vfsmount_at(parent.addr() + offset!(mount_mnt) as u64);
        mnt_root = mnt.ptr(offset!(vfsmount_root)).addr();
    }
    Reached::Unresolved
}

/// Whether the file behind descriptor `fd` of `task` may be read-sensitive: a climb to the
/// process's root that records nothing but the last [`TOP_COMPONENTS`] dentries (a few
/// instructions a step, all in registers), then the [`ReadPrefilter`] on their names and the
/// file's own. A file that could not be resolved within the bounds passes, so that [`resolve`]
/// counts it; one without a path (a pipe, a socket) does not. When a pattern entry matched,
/// [`Resolved::decided`] says so.
///
/// Most read-only opens end here, so it is inlined: no call and return on the hot path.
#[inline(always)]
pub fn may_be_read_sensitive(task: Task, file: Option<Btf>) -> bool {
    let Some(file) = file else {
        return false;
    };
    let Some(top) = top_components(task, file) else {
        return false;
    };
    // SAFETY: reading a global set at load time (a constant to the verifier: no fork).
    let disabled =
        unsafe { core::ptr::read_volatile(&READ_PREFILTER.len) } == ReadPrefilter::DISABLED;
    // Most paths stop at their first component's bit, tested on the climb's registers: the
    // map memory below is touched only by the few that pass (measured: 15 ns less per
    // read-only open than when every open wrote it).
    if !disabled && !first_may_match(top[0]) {
        return false;
    }
    let Some(record) = RESOLUTION.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: the per-CPU slot is used by one program run at a time on its CPU.
    let record = unsafe { &mut *record };
    // Through map memory, the verifier sees the dentries' addresses as plain numbers: the
    // comparison casts them again, and the compiler may not reuse a pointer as a zero.
    put!(record.top, top);
    let leaf = file.at(offset!(file_path)).ptr(offset!(path_dentry)).addr();
    put!(record.leaf, leaf);
    put!(record.decided, 0);
    disabled || compare_entries() != 0
}

/// The dentries of the top [`TOP_COMPONENTS`] components of `file`'s path as `task` sees it
/// (nearest the root first, 0 for none), or all [`UNKNOWN`] when the climb did not end within
/// the bounds (which the prefilter passes); none for a file without a path.
#[inline(always)]
fn top_components(task: Task, file: Btf) -> Option<[u64; TOP_COMPONENTS]> {
    let parent_at = offset!(dentry_parent);
    let root = task.0.ptr(offset!(task_fs)).at(offset!(fs_root));
    let (root_mnt, root_dentry) = (
        root.ptr(offset!(path_mnt)).addr(),
        root.ptr(offset!(path_dentry)).addr(),
    );
    let path = file.at(offset!(file_path));
    let mut mnt = path.ptr(offset!(path_mnt));
    let mut dentry = path.ptr(offset!(path_dentry));
    if mnt.addr() == 0 || dentry.addr() == 0 {
        return Some([UNKNOWN; TOP_COMPONENTS]);
    }
    // On the process's root mount the climb meets the process's root before the mount's own
    // whenever the file is below it, the common case: the mount's root is not read (0 never
    // matches). A file outside it climbs on to its filesystem's root, a dentry of its own,
    // and passes as unknown.
    let mut mnt_root = if mnt.addr() == root_mnt {
        0
    } else {
        mnt.ptr(offset!(vfsmount_root)).addr()
    };
    let (mut first, mut second, mut third) = (0, 0, 0);
    for _ in 0..=MAX_MOUNTS {
        let mut at_mount_root = false;
        for _ in 0..MAX_COMPONENTS {
            let here = dentry.addr();
            if here == root_dentry && mnt.addr() == root_mnt {
                return Some([first, second, third]);
            }
            if here == mnt_root {
                at_mount_root = true;
                break;
            }
            let parent = dentry.ptr(parent_at);
            if parent.addr() == here || parent.addr() == 0 {
                // A dentry of its own, not in a tree: a pipe's, a socket's, a memfd's, on a
                // kernel-internal mount, has no path (tested here, off the path of files that
                // have one); anything else is a broken chain, which the prefilter passes.
                if mnt.u32_at(offset!(vfsmount_flags)) & MNT_INTERNAL != 0 {
                    return None;
                }
                return Some([UNKNOWN; TOP_COMPONENTS]);
            }
            third = second;
            second = first;
            first = here;
            dentry = parent;
        }
        if !at_mount_root {
            break;
        }
        let mount = mount_at(mnt.addr() - offset!(mount_mnt) as u64);
        let parent = mount.ptr(offset!(mount_parent));
        if parent.addr() == mount.addr() {
            // The root of another namespace: the path is absolute there.
            return Some([first, second, third]);
        }
        if parent.addr() == 0 {
            break;
        }
        dentry = mount.ptr(offset!(mount_mountpoint));
        mnt = vfsmount_at(parent.addr() + offset!(mount_mnt) as u64);
        mnt_root = mnt.ptr(offset!(vfsmount_root)).addr();
    }
    Some([UNKNOWN; TOP_COMPONENTS])
}

/// `AT_FDCWD`: a path relative to the current directory.
pub const AT_FDCWD: i32 = -100;

/// Stands for a component whose dentry is not known: the prefilter lets it through.
const UNKNOWN: u64 = u64::MAX;

/// Where the climb ended and the number of components kept.
pub struct Resolved {
    pub reached: Reached,
    pub depth: u32,
}

/// Whether the last [`may_be_read_sensitive`] on this CPU matched a pattern entry: the file is
/// read-sensitive whatever the prefix trie says.
#[inline(always)]
pub fn decided_read_sensitive() -> bool {
    match RESOLUTION.get_ptr(0) {
        // SAFETY: this CPU's slot, written in this program run; a volatile read.
        Some(record) => unsafe { core::ptr::read_volatile(&(*record).decided) != 0 },
        None => false,
    }
}

impl Resolved {
    /// What the last [`resolve`] on this CPU found.
    #[inline(always)]
    pub fn read() -> Option<(Self, &'static Resolution)> {
        let record = RESOLUTION.get_ptr(0)?;
        // SAFETY: this CPU's slot, written by `resolve` in this program run; volatile reads.
        let record = unsafe { &*record };
        Some((
            Self {
                reached: Reached::from_u32(get!(record.reached)),
                depth: get!(record.depth),
            },
            record,
        ))
    }
}

/// Whether a path whose first component is the dentry `first` (0 for none, [`UNKNOWN`]) may
/// start with a read-sensitive entry: its first byte and length against the prefilter's bits.
/// An unknown name may. The entries themselves are compared in [`compare_entries`].
#[inline(always)]
fn first_may_match(first: u64) -> bool {
    if first == 0 {
        // The root itself, which no entry names. Answered without a name: the compiler would
        // reuse the dentry register, known to be zero here, as the name's bytes, and the
        // verifier refuses arithmetic on a pointer.
        return false;
    }
    let first = Name::of(first);
    if first.unknown != 0 {
        return true;
    }
    let byte = first.word as u8;
    // SAFETY: globals set at load time.
    let (exact, prefix) = unsafe {
        (
            core::ptr::read_volatile(&READ_PREFILTER.first_exact),
            core::ptr::read_volatile(&READ_PREFILTER.first_prefix),
        )
    };
    let exact = exact >> ReadPrefilter::exact_bit(byte, first.len) & 1;
    let prefix = prefix >> ReadPrefilter::prefix_bit(byte) & 1;
    exact | prefix != 0
}

/// Compares this CPU's [`Resolution`] top components and leaf with every prefilter entry:
/// 0 when none may match, 1 when one may (the prefix trie decides), 2 when a pattern surely
/// matched (also left in `decided`).
///
/// Not inlined, and branch-free over the entries: each comparison is arithmetic (see
/// [`nonzero`]), and the names go through map memory, so that the verifier walks the entries
/// once whatever the names (with a branch per comparison, the paths multiplied past its
/// 1M-instruction limit).
#[inline(never)]
fn compare_entries() -> u32 {
    let Some(record) = RESOLUTION.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: the per-CPU slot is used by one program run at a time on its CPU.
    let record = unsafe { &mut *record };
    let top = get!(record.top);
    for (i, dentry) in top.into_iter().enumerate() {
        put!(record.names[i], Name::of(dentry));
    }
    let leaf = Name::of(get!(record.leaf));
    put!(record.names[TOP_COMPONENTS], leaf);
    let names = get!(record.names);
    // SAFETY: reading a global set at load time.
    let len = unsafe { core::ptr::read_volatile(&READ_PREFILTER.len) };
    let (mut may, mut decided) = (0u64, 0u64);
    for i in 0..READ_PREFILTER_SLOTS {
        // `len` is a constant to the verifier (a frozen global): this branch does not fork.
        if i as u32 >= len {
            break;
        }
        // SAFETY: reading a global set at load time; `i` is in bounds.
        let entry = unsafe { &*core::ptr::addr_of!(READ_PREFILTER.entries[i]) };
        let mut may_miss = 0;
        let mut sure_miss = 0;
        for (n, name) in names.iter().enumerate() {
            let want = if n < TOP_COMPONENTS {
                read_word(&entry.words[n])
            } else {
                read_word(&entry.leaf)
            };
            let (may_not, surely_not) = name.misses(&want);
            may_miss |= may_not;
            sure_miss |= surely_not;
        }
        // SAFETY: as above.
        let decides = u64::from(unsafe { core::ptr::read_volatile(&entry.decides) } != 0);
        let hit = nonzero(may_miss) ^ 1;
        may |= hit;
        decided |= hit & decides & (nonzero(sure_miss) ^ 1);
    }
    if decided != 0 {
        put!(record.decided, 1);
        return 2;
    }
    may as u32
}

/// 1 when `x` is not zero, else 0, computed without a branch (the compiler would turn a
/// comparison into one on this target).
#[inline(always)]
fn nonzero(x: u64) -> u64 {
    let out: u64;
    // SAFETY: register arithmetic only.
    unsafe {
        core::arch::asm!(
            "{out} = {x}",
            "{out} = -{out}",
            "{out} |= {x}",
            "{out} >>= 63",
            x = in(reg) x,
            out = out(reg) out,
        );
    }
    out
}

#[inline(always)]
fn read_word(word: &NameWord) -> NameWord {
    // SAFETY: a global set at load time; volatile so the placeholder is not folded in.
    unsafe { core::ptr::read_volatile(word) }
}

/// Whether any read-sensitive entry is configured (read-only opens are left at once otherwise).
#[inline(always)]
pub fn read_sensitive_configured() -> bool {
    // SAFETY: reading a global set at load time.
    unsafe { core::ptr::read_volatile(&READ_PREFILTER.len) != 0 }
}

/// The path's length without the NUL, in a [`build`] result.
pub const BUILT_LEN: u64 = 0xffff_ffff;
/// Set in a [`build`] result when the path was cut at `PATH_MAX_BYTES - 1` bytes.
pub const BUILT_TRUNCATED: u64 = 1 << 32;

/// Writes the path of the first `depth` recorded components into `dst` (at least
/// `2 * PATH_MAX_BYTES` bytes, so that a name read at any offset below `PATH_MAX_BYTES` stays
/// inside it). Returns the length without the NUL ([`BUILT_LEN`], 0 when a name could not be
/// read) and [`BUILT_TRUNCATED`]. Not inlined: verified once, whatever its caller.
#[inline(never)]
pub fn build(record: &Resolution, depth: u32, dst: *mut u8) -> u64 {
    let mut pos: usize = 0;
    let mut truncated = false;
    if depth == 0 {
        // SAFETY: `dst` holds at least two bytes.
        unsafe {
            *dst = b'/';
            *dst.add(1) = 0;
        }
        return 1;
    }
    for step in 0..MAX_COMPONENTS {
        if step as u32 >= depth {
            break;
        }
        // Top-down: the last recorded component is the one just below the root.
        let i = (depth as usize - 1 - step) & (MAX_COMPONENTS - 1);
        if pos >= PATH_MAX_BYTES - 1 {
            truncated = true;
            break;
        }
        // SAFETY: `pos < PATH_MAX_BYTES`, inside `dst`.
        unsafe { *dst.add(pos & (PATH_MAX_BYTES - 1)) = b'/' };
        pos += 1;
        let len = record.len[i] as usize & (PATH_MAX_BYTES - 1);
        // SAFETY: the helper writes at most `len + 1 <= PATH_MAX_BYTES` bytes at an offset
        // below `PATH_MAX_BYTES`, inside the `2 * PATH_MAX_BYTES` bytes of `dst`.
        let read = unsafe {
            bpf_probe_read_kernel_str(
                dst.add(pos & (PATH_MAX_BYTES - 1)).cast(),
                (len + 1) as u32,
                record.name[i] as *const _,
            )
        };
        if read <= 0 {
            return 0;
        }
        pos += read as usize - 1;
    }
    if pos >= PATH_MAX_BYTES {
        truncated = true;
        pos = PATH_MAX_BYTES - 1;
    }
    // SAFETY: `pos < PATH_MAX_BYTES`.
    unsafe { *dst.add(pos & (PATH_MAX_BYTES - 1)) = 0 };
    pos as u64 | if truncated { BUILT_TRUNCATED } else { 0 }
}
