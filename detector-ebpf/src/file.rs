//! File activity at syscall exit, reached from [`crate::sys_exit`].
//!
//! Taking opens at exit means the kernel has done the lookup: a successful open has a
//! `struct file`, and [`crate::path`] resolves its path from the file's own dentries and mounts
//! (relative paths, `..`, symlinks and bind mounts included), as the process sees it, with no
//! user-memory read and no race with the argument. So:
//! - a read-only open of an ordinary file costs no helper call (the current task comes from a
//!   per-CPU cache, see [`Task::at_syscall_exit`]) and a typed load per path component,
//!   compared on the way with the read-sensitive prefilter; only a file whose first components
//!   could start a read-sensitive entry has its path built and classified, and only a
//!   read-sensitive one is reported;
//! - an open with write intent is reported with its resolved path, its class, and what it
//!   returned;
//! - a failed open with write intent, and an open whose file the kernel cannot resolve within
//!   its bounds, are reported by a program of their own reached by tail call
//!   ([`sys_exit_as_passed`]) with the path as passed, joined to its directory when relative;
//!   one that cannot be joined either is flagged unresolved and classed as possibly sensitive
//!   (never less suspicious for being deep);
//! - unlink, truncate, chmod, rename, link and symlink, in programs of their own reached by
//!   tail call, are reported when a path involved is sensitive, a log or shell history
//!   (unlink, truncate, rename), or when a chmod sets the setuid or setgid bit anywhere: a
//!   relative path joined first to its directory, resolved as an opened file's path is; one
//!   with `.` or `..` components whatever its class, for user space to resolve and classify.

use aya_ebpf::{
    helpers::{
        bpf_probe_read_user,
        generated::{bpf_ktime_get_boot_ns, bpf_probe_read_user_str},
    },
    macros::{btf_tracepoint, map},
    maps::{LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::BtfTracePointContext,
};
use detector_common::{
    DedupKey, DedupValue, EventKind, FNV_OFFSET, FNV_PRIME, FileEvent, FileOp,
    PATH_CLASS_KEY_BYTES, PATH_MAX_BYTES, PATH_OP_FAILED_OPEN, PathClassData, RenameEvent, Stat,
    file_flags,
    linux::{O_TRUNC, SET_ID_BITS},
    path_class,
};

use crate::{
    common::{
        EVENTS, cgroup_watched, count, count_lost, fill_header, is_daemon, wakeup_flags,
        watching_all,
    },
    kernel::Task,
    path::{self, AT_FDCWD, BUILT_LEN, BUILT_TRUNCATED, Reached, Resolution, Resolved},
    sys_exit::{PATH_OPS, Regs, nr, open_args},
};

/// Path prefix classes, filled by user space from the configuration.
#[map(name = "PATH_CLASS")]
static PATH_CLASS: LpmTrie<PathClassData, u32> = LpmTrie::with_max_entries(256, 1);

/// Last reported write-open per (cgroup, path).
#[map(name = "WRITE_DEDUP")]
static WRITE_DEDUP: LruHashMap<DedupKey, DedupValue> = LruHashMap::with_max_entries(65536, 0);

/// A file record with room behind its path, so that a path can be built in place (a name is
/// read at any offset below `PATH_MAX_BYTES`, up to `PATH_MAX_BYTES` bytes long).
#[repr(C)]
struct FileScratch {
    event: FileEvent,
    spill: [u8; PATH_MAX_BYTES],
}

/// Scratch record, too large for the 512-byte stack.
#[map(name = "FILE_SCRATCH")]
static FILE_SCRATCH: PerCpuArray<FileScratch> = PerCpuArray::with_max_entries(1, 0);

/// A rename record with room behind its target, so that both paths can be joined in place
/// (see [`join_relative`]).
#[repr(C)]
struct RenameScratch {
    event: RenameEvent,
    spill: [u8; PATH_MAX_BYTES],
}

/// Scratch record for renames.
#[map(name = "RENAME_SCRATCH")]
static RENAME_SCRATCH: PerCpuArray<RenameScratch> = PerCpuArray::with_max_entries(1, 0);

/// Repeat-suppression window for write-opens in nanoseconds; 0 disables it.
#[unsafe(no_mangle)]
static DEDUP_WINDOW_NS: u64 = 0;

const O_ACCMODE: u32 = 0o3;
pub const O_CREAT: u32 = 0o100;
pub const O_WRONLY: u32 = 0o1;

/// `tp_btf/sys_exit`, reached by a tail call from [`crate::sys_exit`]: unlink, chmod and
/// truncate.
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_path_op(ctx: BtfTracePointContext) -> i32 {
    let regs = Regs::of(&ctx);
    let ret: i64 = ctx.arg(1);
    let (op, dirfd, path, mode) = match regs.nr() {
        nr::UNLINK => (FileOp::Unlink, AT_FDCWD, regs.arg(0), 0),
        nr::TRUNCATE => (FileOp::Truncate, AT_FDCWD, regs.arg(0), 0),
        nr::UNLINKAT => (FileOp::Unlink, regs.arg(0) as i32, regs.arg(1), 0),
        nr::CHMOD => (FileOp::Chmod, AT_FDCWD, regs.arg(0), regs.arg(1) as u32),
        nr::FCHMODAT | nr::FCHMODAT2 => (
            FileOp::Chmod,
            regs.arg(0) as i32,
            regs.arg(1),
            regs.arg(2) as u32,
        ),
        _ => return 0,
    };
    match path_op(op, dirfd, path, mode, ret) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// `tp_btf/sys_exit`, reached by a tail call from [`open`]: a failed open with write intent,
/// or an open whose file could not be resolved within the climb's bounds.
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_as_passed(ctx: BtfTracePointContext) -> i32 {
    let regs = Regs::of(&ctx);
    let ret: i64 = ctx.arg(1);
    let (dirfd, path, flags) = open_args!(regs, regs.nr(), return 0);
    match open_as_passed(dirfd, path, flags, ret) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// `tp_btf/sys_exit`, reached by a tail call from [`crate::sys_exit`]: rename, link and
/// symlink.
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_rename(ctx: BtfTracePointContext) -> i32 {
    let regs = Regs::of(&ctx);
    let ret: i64 = ctx.arg(1);
    let (op, old_dirfd, old, new_dirfd, new) = match regs.nr() {
        nr::RENAME => (FileOp::Rename, AT_FDCWD, regs.arg(0), AT_FDCWD, regs.arg(1)),
        nr::RENAMEAT | nr::RENAMEAT2 => (
            FileOp::Rename,
            regs.arg(0) as i32,
            regs.arg(1),
            regs.arg(2) as i32,
            regs.arg(3),
        ),
        nr::LINK => (FileOp::Link, AT_FDCWD, regs.arg(0), AT_FDCWD, regs.arg(1)),
        nr::LINKAT => (
            FileOp::Link,
            regs.arg(0) as i32,
            regs.arg(1),
            regs.arg(2) as i32,
            regs.arg(3),
        ),
        // What a symlink points to is text, relative to the link's own directory if relative:
        // kept as given (`NO_DIRFD`), never joined to the working directory.
        nr::SYMLINK => (
            FileOp::Symlink,
            NO_DIRFD,
            regs.arg(0),
            AT_FDCWD,
            regs.arg(1),
        ),
        nr::SYMLINKAT => (
            FileOp::Symlink,
            NO_DIRFD,
            regs.arg(0),
            regs.arg(1) as i32,
            regs.arg(2),
        ),
        _ => return 0,
    };
    match rename(op, old_dirfd, old, new_dirfd, new, ret) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// The daemon itself and unwatched cgroups are left at once.
#[inline(always)]
pub(crate) fn skip(task: Task) -> bool {
    is_daemon(task.tgid()) || unwatched(task)
}

/// Whether `task`'s cgroup is not watched.
#[inline(always)]
fn unwatched(task: Task) -> bool {
    !watching_all() && !cgroup_watched(task.cgroup_id())
}

/// Whether open `flags` ask for write, create or truncate.
#[inline(always)]
pub fn write_intent(flags: u32) -> bool {
    flags & O_ACCMODE != 0 || flags & (O_CREAT | O_TRUNC) != 0
}

/// A read-only open: reported only when the file it opened is read-sensitive.
///
/// The common case, a read-only open of an ordinary file, ends here, inline in the program:
/// the current task from this CPU's cache, a few typed loads per path component, and the
/// prefilter. No function or helper call when the cache holds the task: with return-thunk
/// mitigations a call and its return cost ~35 ns here, a third of the whole check.
#[inline(always)]
pub fn read_only_open(
    ctx: &BtfTracePointContext,
    regs: &Regs,
    dirfd: i32,
    flags: u32,
    ret: i64,
) -> Result<i32, i32> {
    // A failed read-only open read nothing; without read-sensitive entries no read-only open
    // is of interest.
    if ret < 0 || !path::read_sensitive_configured() {
        return Ok(0);
    }
    let task = Task::at_syscall_exit(regs.0 as u64);
    // The daemon's own opens are left out after the prefilter, in `open`: few of them pass it,
    // and none of the others needs the task's thread-group id.
    if unwatched(task) || !path::may_be_read_sensitive(task, path::just_opened(task, ret)) {
        return Ok(0);
    }
    Ok(open(ctx, dirfd, flags, ret))
}

/// An open that may be reported: one with write intent, with the resolved path of the file it
/// opened, unless excluded or a repeat; a read-only one that passed the prefilter, when the
/// file it opened is read-sensitive. One function for both, so that the climb and the path
/// building are verified once. A failed one, and one whose file could not be resolved within
/// the bounds, go on in [`sys_exit_as_passed`].
///
/// The tail call is made here, in a function of its own, not on `sys_exit`'s
/// own path: a branch there for it, however placed, took `sys_exit` past the verifier's
/// 1M-instruction limit (from ~660k).
#[cfg(not(feature = "probe-read"))]
#[inline(never)]
pub fn open(ctx: &BtfTracePointContext, dirfd: i32, flags: u32, ret: i64) -> i32 {
    // A plain return value: a `Result` would travel through a sixth, stack argument.
    match try_open(ctx, dirfd, flags, ret) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// The `probe-read` build's [`open`]: on to [`sys_exit_open`] by tail call, the same work with a
/// verifier budget of its own. There, `sys_exit`'s prefilter and the climb and path building
/// together exceed the 1M-instruction limit (a probe read is a helper call where the typed
/// build has a load); in the typed build the tail call would cost `sys_exit` more than it
/// saves (measured: past the limit, from ~780k).
#[cfg(feature = "probe-read")]
#[inline(never)]
pub fn open(ctx: &BtfTracePointContext, _dirfd: i32, _flags: u32, _ret: i64) -> i32 {
    // SAFETY: as in `sys_exit`'s other tail calls.
    unsafe { PATH_OPS.tail_call(ctx, detector_common::PATH_OP_OPEN) };
    count(Stat::TailCallFailures);
    0
}

/// `tp_btf/sys_exit`, reached by a tail call from [`open`]: the `probe-read` build only (the
/// typed build does the same work in [`open`] itself).
#[cfg(feature = "probe-read")]
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_open(ctx: BtfTracePointContext) -> i32 {
    let regs = Regs::of(&ctx);
    let ret: i64 = ctx.arg(1);
    let (dirfd, _path, flags) = open_args!(regs, regs.nr(), return 0);
    match try_open(&ctx, dirfd, flags, ret) {
        Ok(ret) | Err(ret) => ret,
    }
}

#[inline(always)]
fn try_open(ctx: &BtfTracePointContext, dirfd: i32, flags: u32, ret: i64) -> Result<i32, i32> {
    if ret < 0 {
        // A failed open has no file: its path as passed, joined to its directory when
        // relative, in a program of its own, as unlink and chmod. Only one with write intent
        // gets here (a failed read-only open read nothing).
        // SAFETY: as in `other`.
        unsafe { PATH_OPS.tail_call(ctx, PATH_OP_FAILED_OPEN) };
        count(Stat::TailCallFailures);
        return Ok(0);
    }
    let task = Task::current();
    if skip(task) {
        return Ok(0);
    }
    if report_opened(task, dirfd, flags, ret, 0)? == Opened::Unresolved {
        // Beyond the bounds of the climb: the path as passed, flagged unresolved.
        // SAFETY: as above.
        unsafe { PATH_OPS.tail_call(ctx, PATH_OP_FAILED_OPEN) };
        count(Stat::TailCallFailures);
    }
    Ok(0)
}

/// What [`report_opened`] made of an opened file.
#[derive(PartialEq, Eq)]
pub(crate) enum Opened {
    /// Reported, or of no interest (not sensitive, excluded, a repeat, no path: a pipe...).
    Done,
    /// Its path could not be resolved within the climb's bounds.
    Unresolved,
}

/// The report of file descriptor `fd`, just opened by `task` with `flags` (relative to
/// `dirfd`): its path resolved and classified; reported when written to (unless excluded or a
/// repeat) or read-sensitive. `extra_flags` are added to the record's (`IO_URING`).
#[inline(always)]
pub(crate) fn report_opened(
    task: Task,
    dirfd: i32,
    flags: u32,
    fd: i64,
    extra_flags: u32,
) -> Result<Opened, i32> {
    let write = write_intent(flags);
    path::resolve(task, fd);
    let resolved = Resolved::read();
    let scratch = scratch(&FILE_SCRATCH)?;
    let has_path = match &resolved {
        Some((top, record)) if resolvable(top) => build_path(top, record, scratch),
        _ => false,
    };
    if !has_path {
        if matches!(&resolved, Some((top, _)) if matches!(top.reached, Reached::Internal | Reached::NoFile))
        {
            // A pipe, a socket, a memfd: no path to report.
            return Ok(Opened::Done);
        }
        return Ok(Opened::Unresolved);
    }
    let event = &mut scratch.event;
    let mut class = classify(&event.path, event.path_len);
    if !write && path::decided_read_sensitive() {
        class |= path_class::READ_SENSITIVE;
    }
    if class & path_class::EXCLUDED != 0 || (!write && class & path_class::READ_SENSITIVE == 0) {
        return Ok(Opened::Done);
    }
    fill_file(event, FileOp::Open, dirfd, class, flags, fd);
    event.flags |= extra_flags;
    if write {
        event.flags |= file_flags::WRITE_INTENT;
        if suppress_repeat(event) {
            return Ok(Opened::Done);
        }
    }
    output(event);
    Ok(Opened::Done)
}

/// Whether a climb ended somewhere a path means something; counts those it could not finish.
#[inline(always)]
fn resolvable(top: &Resolved) -> bool {
    match top.reached {
        Reached::Root | Reached::OtherRoot => true,
        Reached::Internal | Reached::NoFile => false,
        Reached::Unresolved => {
            count(Stat::UnresolvedPaths);
            false
        }
    }
}

/// Writes a resolved path into the scratch record (`path`, `path_len`, and the `RESOLVED`,
/// `OTHER_ROOT` and `PATH_TRUNCATED` flags); false when it could not be built.
#[inline(always)]
fn build_path(top: &Resolved, record: &Resolution, scratch: &mut FileScratch) -> bool {
    if top.depth as usize > path::MAX_COMPONENTS {
        count(Stat::UnresolvedPaths);
        return false;
    }
    let event = &mut scratch.event;
    let built = path::build(record, top.depth, event.path.as_mut_ptr());
    let len = (built & BUILT_LEN) as u32;
    if len == 0 {
        count(Stat::ReadErrors);
        return false;
    }
    event.path_len = len;
    event.flags = file_flags::RESOLVED;
    if top.reached == Reached::OtherRoot {
        event.flags |= file_flags::OTHER_ROOT;
    }
    if built & BUILT_TRUNCATED != 0 {
        event.flags |= file_flags::PATH_TRUNCATED;
    }
    true
}

/// Unlink, truncate or chmod of `user_path` (relative to `dirfd`), reported when the path is
/// sensitive, when an unlink or truncate hits a log or a shell history, when a chmod sets the
/// setuid or setgid bit (anywhere), and when the path could not be joined to its directory.
#[inline(always)]
fn path_op(op: FileOp, dirfd: i32, user_path: u64, mode: u32, ret: i64) -> Result<i32, i32> {
    let task = Task::current();
    if skip(task) {
        return Ok(0);
    }
    let (event, dots) = path_as_passed(task, dirfd, user_path)?;
    let mut class = classify(&event.path, event.path_len);
    let set_id = op == FileOp::Chmod && mode & SET_ID_BITS != 0;
    if op != FileOp::Chmod && is_history(&event.path, event.path_len) {
        class |= path_class::LOG;
    }
    let unresolved = unjoined(event);
    if unresolved {
        // A relative name under a directory the kernel could not resolve: possibly sensitive.
        class |= path_class::SENSITIVE_WRITE;
    }
    let log = op != FileOp::Chmod && class & path_class::LOG != 0;
    if !reportable(class) && dots == 0 && !set_id && !log {
        return Ok(0);
    }
    fill_file(event, op, dirfd, class, mode, ret);
    event.flags |= dots;
    if unresolved {
        event.flags |= file_flags::UNRESOLVED;
    }
    output(event);
    Ok(0)
}

/// An open reported with the path as passed: a failed one with write intent (unless excluded
/// or a repeat), or one whose file the kernel could not resolve within its bounds (a write
/// always, a read when possibly read-sensitive). A relative path that could not be joined to
/// its directory either is classed as sensitive: a depth is no reason to look away.
#[inline(always)]
fn open_as_passed(dirfd: i32, user_path: u64, flags: u32, ret: i64) -> Result<i32, i32> {
    let write = write_intent(flags);
    if ret < 0 && !write {
        return Ok(0);
    }
    let task = Task::current();
    if skip(task) {
        return Ok(0);
    }
    let (event, dots) = path_as_passed(task, dirfd, user_path)?;
    let mut class = classify(&event.path, event.path_len);
    let unjoined = unjoined(event);
    if unjoined {
        class |= if write {
            path_class::SENSITIVE_WRITE
        } else {
            path_class::READ_SENSITIVE
        };
    } else if class & path_class::EXCLUDED != 0 && dots == 0 {
        return Ok(0);
    }
    if !write && class & path_class::READ_SENSITIVE == 0 && dots == 0 {
        return Ok(0);
    }
    fill_file(event, FileOp::Open, dirfd, class, flags, ret);
    event.flags |= dots;
    // A successful open comes here only when its file could not be resolved.
    if ret >= 0 || unjoined {
        event.flags |= file_flags::UNRESOLVED;
    }
    if write {
        event.flags |= file_flags::WRITE_INTENT;
        if suppress_repeat(event) {
            return Ok(0);
        }
    }
    output(event);
    Ok(0)
}

/// Whether the record's path is relative and could not be joined to its directory.
#[inline(always)]
fn unjoined(event: &FileEvent) -> bool {
    event.flags & file_flags::RELATIVE != 0 && event.flags & file_flags::JOINED == 0
}

/// Whether the path of `len` bytes ends in `_history` (`.bash_history`, `.zsh_history`,
/// `.python_history`, `.mysql_history`...): one word compare at its end.
#[inline(always)]
fn is_history(path: &[u8; PATH_MAX_BYTES], len: u32) -> bool {
    const HISTORY: u64 = u64::from_le_bytes(*b"_history");
    if len < 8 {
        return false;
    }
    let at = (len as usize - 8) & (PATH_MAX_BYTES - 1);
    // SAFETY: `at + 8 <= PATH_MAX_BYTES + 7`; every path buffer here is followed by at least
    // `PATH_MAX_BYTES` more bytes of its scratch record.
    let word = unsafe { core::ptr::read_unaligned(path.as_ptr().add(at).cast::<u64>()) };
    word == HISTORY
}

/// The scratch file record with `user_path` as passed, joined first to its directory when
/// relative, and [`file_flags::DOT_COMPONENTS`] when it holds `.` or `..` components.
#[inline(always)]
fn path_as_passed(
    task: Task,
    dirfd: i32,
    user_path: u64,
) -> Result<(&'static mut FileEvent, u32), i32> {
    let scratch = scratch(&FILE_SCRATCH)?;
    // SAFETY: the path and its spill, `2 * PATH_MAX_BYTES` bytes, 8-aligned.
    unsafe { zero(scratch.event.path.as_mut_ptr(), PATH_MAX_BYTES / 4) };
    let event = &mut scratch.event;
    // SAFETY: `path` is followed by `PATH_MAX_BYTES` bytes of spill in `FileScratch`.
    unsafe { read_joined(task, dirfd, user_path, event) };
    // SAFETY: `path` is followed by its spill.
    let dots = if unsafe { has_dot_components(event.path.as_ptr()) } {
        file_flags::DOT_COMPONENTS
    } else {
        0
    };
    Ok((event, dots))
}

/// A rename, link or symlink, reported when either path is sensitive, or the source a log or a
/// shell history; relative ones are joined to their directories first (not what a symlink
/// points to: that is text, relative to the link's directory).
#[inline(always)]
fn rename(
    op: FileOp,
    old_dirfd: i32,
    old: u64,
    new_dirfd: i32,
    new: u64,
    ret: i64,
) -> Result<i32, i32> {
    let task = Task::current();
    if skip(task) {
        return Ok(0);
    }
    let scratch = scratch(&RENAME_SCRATCH)?;
    // SAFETY: from the source path to the end of the spill, 8-aligned.
    unsafe {
        zero(
            scratch.event.file.path.as_mut_ptr(),
            (3 * PATH_MAX_BYTES + 8) / 8,
        )
    };
    let event = &mut scratch.event;
    // The source first: joining it may spill over the target's fields, written after.
    if op == FileOp::Symlink {
        read_user_path(old, &mut event.file);
    } else {
        // SAFETY: `file.path` is followed by more than `PATH_MAX_BYTES` bytes of the record.
        unsafe { read_joined(task, old_dirfd, old, &mut event.file) };
    }
    let (mut len, mut truncated) = read_path(new, &mut event.target);
    if event.target[0] != b'/' && len > 0 {
        // SAFETY: `target` is followed by `PATH_MAX_BYTES` bytes of spill in `RenameScratch`.
        let joined = unsafe { join_relative(task, new_dirfd, new, event.target.as_mut_ptr()) };
        if joined & JOINED != 0 {
            len = (joined & BUILT_LEN) as u32;
            truncated |= joined & BUILT_TRUNCATED != 0;
            event.file.flags |= joined_flags(joined);
        }
    }
    event.target_len = len;
    let mut class = classify(&event.file.path, event.file.path_len) | classify(&event.target, len);
    if is_history(&event.file.path, event.file.path_len) {
        class |= path_class::LOG;
    }
    // SAFETY: `file.path` is followed by the target, the target by the spill.
    let dots = unsafe {
        has_dot_components(event.file.path.as_ptr()) || has_dot_components(event.target.as_ptr())
    };
    if !reportable(class) && !dots {
        return Ok(0);
    }
    fill_file(&mut event.file, op, old_dirfd, class, 0, ret);
    if truncated {
        event.file.flags |= file_flags::PATH_TRUNCATED;
    }
    if dots {
        event.file.flags |= file_flags::DOT_COMPONENTS;
    }
    event.target_dirfd = new_dirfd;
    event.file.header.kind = EventKind::Rename as u32;
    if EVENTS.output::<RenameEvent>(event, wakeup_flags()).is_err() {
        count_lost(EventKind::Rename);
    }
    Ok(0)
}

/// Whether a path operation on a path of `class` is reported.
#[inline(always)]
fn reportable(class: u32) -> bool {
    class & path_class::EXCLUDED == 0
        && class & (path_class::SENSITIVE_WRITE | path_class::READ_SENSITIVE | path_class::LOG) != 0
}

#[inline(always)]
#[expect(
    clippy::mut_from_ref,
    reason = "map values are shared memory the kernel hands out by pointer"
)]
fn scratch<T>(array: &'static PerCpuArray<T>) -> Result<&'static mut T, i32> {
    // SAFETY: the per-CPU slot is used by this program only, and a program is not preempted
    // on its CPU while it runs.
    array
        .get_ptr_mut(0)
        .map(|ptr| unsafe { &mut *ptr })
        .ok_or(0)
}

/// Whether the path at `path` holds a `.` or `..` component, which the prefix classes cannot
/// see through (`/tmp/../etc/shadow` is under `/tmp` by its bytes). Such a path operation is
/// reported whatever its class; user space normalizes the path and classifies it again.
///
/// Eight positions at a time with word arithmetic (a byte-wise loop turns into a branch per
/// byte, and the verifier follows each). Bytes past the path's NUL are zero ([`zero`]).
///
/// # Safety
/// `path` must have `PATH_MAX_BYTES + 8` readable bytes.
#[inline(always)]
unsafe fn has_dot_components(path: *const u8) -> bool {
    // SAFETY: `at + 8 <= PATH_MAX_BYTES + 8` for every `at` below.
    let word = |at: usize| unsafe { core::ptr::read_unaligned(path.add(at).cast::<u64>()) };
    let ends = |w: u64| byte_eq(w, b'/') | byte_eq(w, 0);
    let dots =
        |w1: u64, w2: u64, w3: u64| byte_eq(w1, b'.') & (ends(w2) | (byte_eq(w2, b'.') & ends(w3)));
    // A relative path's first component, as if behind a separator: byte 0 only.
    let mut found = dots(word(0), word(1), word(2)) & 0x80;
    for at in (0..PATH_MAX_BYTES).step_by(8) {
        let (w0, w1, w2, w3) = (word(at), word(at + 1), word(at + 2), word(at + 3));
        found |= byte_eq(w0, b'/') & dots(w1, w2, w3);
    }
    found != 0
}

/// The high bit of each byte of `w` that is `b`, without a comparison (no carry crosses bytes:
/// each byte's sum is at most 0xfe).
#[inline(always)]
fn byte_eq(w: u64, b: u8) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = w ^ (0x0101_0101_0101_0101 * u64::from(b));
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// Zeroes `words` words at `at`, so that nothing of an earlier path lies behind the next one.
///
/// # Safety
/// `at` must have `8 * words` writable bytes, 8-aligned.
#[inline(always)]
unsafe fn zero(at: *mut u8, words: usize) {
    for i in 0..words {
        // SAFETY: inside the region, per the contract.
        unsafe { core::ptr::write_volatile(at.cast::<u64>().add(i), 0) };
    }
}

/// The class bits of the longest configured prefix of `path`: one LPM lookup on its first
/// bytes, the NUL included when it fits (exact entries end in NUL).
#[inline(always)]
fn classify(path: &[u8; PATH_MAX_BYTES], len: u32) -> u32 {
    let mut key = Key::<PathClassData>::new(0, [0; PATH_CLASS_KEY_BYTES]);
    key.data.copy_from_slice(&path[..PATH_CLASS_KEY_BYTES]);
    let bytes = if len as usize >= PATH_CLASS_KEY_BYTES - 1 {
        PATH_CLASS_KEY_BYTES - 1
    } else {
        len as usize + 1
    };
    key.prefix_len = (bytes * 8) as u32;
    PATH_CLASS.get(&key).copied().unwrap_or(0)
}

/// Fills everything but the path (already in place) and its flags.
#[inline(always)]
fn fill_file(event: &mut FileEvent, op: FileOp, dirfd: i32, class: u32, flags: u32, ret: i64) {
    fill_header(&mut event.header, EventKind::File);
    event.op = op as u32;
    event.class = class;
    event.open_flags = flags;
    event.dirfd = dirfd;
    event.suppressed = 0;
    event.result = ret as i32;
}

/// The path as the process passed it, for failed opens and for unlink, rename and chmod.
#[inline(always)]
fn read_user_path(user_path: u64, event: &mut FileEvent) {
    let (len, truncated) = read_path(user_path, &mut event.path);
    event.path_len = len;
    event.flags = 0;
    if truncated {
        event.flags |= file_flags::PATH_TRUNCATED;
    }
    if event.path[0] != b'/' {
        event.flags |= file_flags::RELATIVE;
    }
}

/// The directory fd of an argument never joined to a directory (what a symlink points to).
const NO_DIRFD: i32 = -1;

/// Set in [`join_relative`]'s result when it joined.
const JOINED: u64 = 1 << 62;
/// Set in [`join_relative`]'s result when the directory lies outside the process's root.
const JOINED_OTHER_ROOT: u64 = 1 << 61;

/// A relative path argument joined to the directory it is relative to (the file behind
/// `dirfd`, or the current directory for `AT_FDCWD`), resolved in the kernel as an opened
/// file's path is: `<directory>/<argument>`, written at `dst` over the argument read before.
/// Returns the length ([`BUILT_LEN`]), [`BUILT_TRUNCATED`], [`JOINED`] and
/// [`JOINED_OTHER_ROOT`]; without `JOINED` (the directory could not be resolved) `dst` still
/// holds the argument as passed. `..` in the argument is kept as is.
///
/// Not inlined: one copy of its code for its callers.
///
/// # Safety
/// `dst` must have `2 * PATH_MAX_BYTES` writable bytes.
#[inline(never)]
unsafe fn join_relative(task: Task, dirfd: i32, user_path: u64, dst: *mut u8) -> u64 {
    path::resolve(task, i64::from(dirfd));
    let Some((top, record)) = Resolved::read() else {
        return 0;
    };
    if !resolvable(&top) || top.depth as usize > path::MAX_COMPONENTS {
        return 0;
    }
    let outside = if top.reached == Reached::OtherRoot {
        JOINED_OTHER_ROOT
    } else {
        0
    };
    let built = path::build(record, top.depth, dst);
    let base = (built & BUILT_LEN) as usize;
    if base == 0 {
        // The argument was overwritten: read it again, as passed.
        // SAFETY: the helper writes at most `PATH_MAX_BYTES` bytes at `dst`.
        unsafe {
            bpf_probe_read_user_str(dst.cast(), PATH_MAX_BYTES as u32, user_path as *const _)
        };
        return 0;
    }
    if built & BUILT_TRUNCATED != 0 || base >= PATH_MAX_BYTES - 2 {
        return base as u64 | BUILT_TRUNCATED | JOINED | outside;
    }
    // The root builds as "/": no second separator.
    let at = if base == 1 { 1 } else { base + 1 };
    // SAFETY: `at - 1 < PATH_MAX_BYTES`, inside `dst`.
    unsafe { *dst.add((at - 1) & (PATH_MAX_BYTES - 1)) = b'/' };
    // SAFETY: at most `PATH_MAX_BYTES` bytes at an offset below `PATH_MAX_BYTES`, inside the
    // `2 * PATH_MAX_BYTES` bytes of `dst`.
    let read = unsafe {
        bpf_probe_read_user_str(
            dst.add(at & (PATH_MAX_BYTES - 1)).cast(),
            PATH_MAX_BYTES as u32,
            user_path as *const _,
        )
    };
    if read <= 0 {
        // SAFETY: as above.
        unsafe { *dst.add(base & (PATH_MAX_BYTES - 1)) = 0 };
        return base as u64 | JOINED | outside;
    }
    let len = at + read as usize - 1;
    if len >= PATH_MAX_BYTES {
        // SAFETY: inside `dst`.
        unsafe { *dst.add(PATH_MAX_BYTES - 1) = 0 };
        return (PATH_MAX_BYTES - 1) as u64 | BUILT_TRUNCATED | JOINED | outside;
    }
    len as u64 | JOINED | outside
}

/// Reads `user_path` into `event` as passed ([`read_user_path`]) and, when relative, joins it
/// to its directory ([`join_relative`]), with the length and flags that follow.
///
/// # Safety
/// `event.path` must be followed by `PATH_MAX_BYTES` writable bytes.
#[inline(always)]
unsafe fn read_joined(task: Task, dirfd: i32, user_path: u64, event: &mut FileEvent) {
    read_user_path(user_path, event);
    if event.flags & file_flags::RELATIVE == 0 {
        return;
    }
    // SAFETY: per the contract, `2 * PATH_MAX_BYTES` bytes at `path`.
    let joined = unsafe { join_relative(task, dirfd, user_path, event.path.as_mut_ptr()) };
    if joined & JOINED != 0 {
        event.path_len = (joined & BUILT_LEN) as u32;
        event.flags |= joined_flags(joined);
        if joined & BUILT_TRUNCATED != 0 {
            event.flags |= file_flags::PATH_TRUNCATED;
        }
    }
}

/// The record flags of a [`join_relative`] result that joined.
#[inline(always)]
fn joined_flags(joined: u64) -> u32 {
    if joined & JOINED_OTHER_ROOT != 0 {
        file_flags::JOINED | file_flags::OTHER_ROOT
    } else {
        file_flags::JOINED
    }
}

/// Copies a NUL-terminated user string; returns its length without the NUL and whether it was
/// cut short.
#[inline(always)]
fn read_path(user_path: u64, dst: &mut [u8; PATH_MAX_BYTES]) -> (u32, bool) {
    // SAFETY: the helper writes at most `PATH_MAX_BYTES` bytes into `dst`.
    let read = unsafe {
        bpf_probe_read_user_str(
            dst.as_mut_ptr().cast(),
            PATH_MAX_BYTES as u32,
            user_path as *const _,
        )
    };
    if read <= 0 {
        count(Stat::ReadErrors);
        dst[0] = 0;
        return (0, false);
    }
    let read = read as usize;
    (read as u32 - 1, read >= PATH_MAX_BYTES)
}

/// True when the same cgroup wrote-opened the same path within the window; counts it.
#[inline(always)]
fn suppress_repeat(event: &mut FileEvent) -> bool {
    // SAFETY: reading a global set at load time.
    let window = unsafe { core::ptr::read_volatile(&DEDUP_WINDOW_NS) };
    if window == 0 {
        return false;
    }
    let key = DedupKey {
        cgroup_id: event.header.cgroup_id,
        path_hash: fnv1a(&event.path, event.path_len),
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if let Some(value) = WRITE_DEDUP.get_ptr_mut(key) {
        // SAFETY: the pointer comes from a map lookup; racing writers only blur the count.
        let value = unsafe { &mut *value };
        if now.wrapping_sub(value.last_reported_ns) < window {
            value.suppressed += 1;
            count(Stat::SuppressedWrites);
            return true;
        }
        event.suppressed = value.suppressed;
        value.suppressed = 0;
        value.last_reported_ns = now;
        return false;
    }
    let value = DedupValue {
        last_reported_ns: now,
        suppressed: 0,
        _pad: 0,
    };
    // A full map evicts its least recently used entry; a failed insert only means no suppression.
    let _ = WRITE_DEDUP.insert(key, value, 0);
    false
}

/// FNV-1a over the first `len` bytes. The loop runs over the whole buffer and leaves no
/// earlier, so the verifier walks it as one path instead of following every way out of it.
#[inline(always)]
fn fnv1a(bytes: &[u8; PATH_MAX_BYTES], len: u32) -> u64 {
    let mut hash = FNV_OFFSET;
    for (i, byte) in bytes.iter().enumerate() {
        let next = (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME);
        // Branch-free select: all ones while `i < len`.
        let keep = ((i as u64).wrapping_sub(u64::from(len)) >> 63).wrapping_neg();
        hash = (next & keep) | (hash & !keep);
    }
    hash
}

#[inline(always)]
fn output(event: &FileEvent) {
    // Sent cut after the path (see `FileEvent::record_bytes`).
    let len = FileEvent::record_bytes(event.path_len).min(size_of::<FileEvent>());
    // SAFETY: `len` is at most the record's size; the bytes are the record's own.
    let bytes =
        unsafe { core::slice::from_raw_parts((event as *const FileEvent).cast::<u8>(), len) };
    if EVENTS.output::<[u8]>(bytes, wakeup_flags()).is_err() {
        count_lost(EventKind::File);
    }
}
