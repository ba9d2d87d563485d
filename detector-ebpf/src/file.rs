//! File activity at syscall entry (`tp_btf/sys_enter`).
//!
//! A BTF-enabled raw tracepoint needs no tracefs and costs the least of the hooks that load on
//! this kernel (no LSM, fentry or kprobes here); its `pt_regs` argument is typed, so the
//! argument registers are read with plain loads the verifier checks, not with a helper call. It fires for every syscall of every task, so the program
//! leaves at once for syscalls it does not handle, then for the daemon's own tgid and unwatched
//! cgroups. A read-only open by a watched task costs one 8-byte user read of the path (the
//! prefilter); only a path whose first bytes could start a read-sensitive prefix goes on to the
//! LPM trie lookup. Nothing is copied to the ring buffer unless the open has write intent or
//! its path is read-sensitive.

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
    PATH_CLASS_KEY_BYTES, PATH_MAX_BYTES, PathClassData, PrefixWord, READ_PREFILTER_SLOTS,
    ReadPrefilter, RenameEvent, Stat, file_flags, path_class,
};

use crate::common::{
    EVENTS, count, count_lost, current_cgroup_watched, current_tgid, fill_header, is_daemon,
    watching_all,
};

/// Path prefix classes, filled by user space from the configuration.
#[map(name = "PATH_CLASS")]
static PATH_CLASS: LpmTrie<PathClassData, u32> = LpmTrie::with_max_entries(256, 1);

/// Last reported write-open per (cgroup, path).
#[map(name = "WRITE_DEDUP")]
static WRITE_DEDUP: LruHashMap<DedupKey, DedupValue> = LruHashMap::with_max_entries(65536, 0);

/// Scratch record, too large for the 512-byte stack.
#[map(name = "FILE_SCRATCH")]
static FILE_SCRATCH: PerCpuArray<FileEvent> = PerCpuArray::with_max_entries(1, 0);

/// Scratch record for renames.
#[map(name = "RENAME_SCRATCH")]
static RENAME_SCRATCH: PerCpuArray<RenameEvent> = PerCpuArray::with_max_entries(1, 0);

/// First-bytes prefilter for read-only opens, set by user space at load.
#[unsafe(no_mangle)]
static READ_PREFILTER: ReadPrefilter = ReadPrefilter {
    len: ReadPrefilter::DISABLED,
    _pad: 0,
    words: [PrefixWord { value: 0, mask: 0 }; READ_PREFILTER_SLOTS],
};

/// Repeat-suppression window for write-opens in nanoseconds; 0 disables it.
#[unsafe(no_mangle)]
static DEDUP_WINDOW_NS: u64 = 0;

const AT_FDCWD: i32 = -100;
const O_ACCMODE: u32 = 0o3;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;
const O_WRONLY: u32 = 0o1;

/// Syscall numbers (x86_64: arch/x86/entry/syscalls/syscall_64.tbl).
#[cfg(bpf_target_arch = "x86_64")]
mod nr {
    pub const OPEN: i64 = 2;
    pub const CREAT: i64 = 85;
    pub const OPENAT: i64 = 257;
    pub const OPENAT2: i64 = 437;
    pub const UNLINK: i64 = 87;
    pub const UNLINKAT: i64 = 263;
    pub const RENAME: i64 = 82;
    pub const RENAMEAT: i64 = 264;
    pub const RENAMEAT2: i64 = 316;
    pub const CHMOD: i64 = 90;
    pub const FCHMODAT: i64 = 268;
    pub const FCHMODAT2: i64 = 452;
}

/// Syscall numbers (arm64 uses include/uapi/asm-generic/unistd.h; no legacy open/unlink/...).
#[cfg(bpf_target_arch = "aarch64")]
mod nr {
    pub const OPEN: i64 = -1;
    pub const CREAT: i64 = -2;
    pub const OPENAT: i64 = 56;
    pub const OPENAT2: i64 = 437;
    pub const UNLINK: i64 = -3;
    pub const UNLINKAT: i64 = 35;
    pub const RENAME: i64 = -4;
    pub const RENAMEAT: i64 = 38;
    pub const RENAMEAT2: i64 = 276;
    pub const CHMOD: i64 = -5;
    pub const FCHMODAT: i64 = 53;
    pub const FCHMODAT2: i64 = 452;
}

/// Byte offsets of the syscall argument registers in `struct pt_regs`.
#[cfg(bpf_target_arch = "x86_64")]
const ARG_OFFSETS: [usize; 5] = [112, 104, 96, 56, 72]; // di, si, dx, r10, r8
#[cfg(bpf_target_arch = "aarch64")]
const ARG_OFFSETS: [usize; 5] = [0, 8, 16, 24, 32]; // x0..x4

/// `tp_btf/sys_enter(struct pt_regs *regs, long id)`.
#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter(ctx: BtfTracePointContext) -> i32 {
    match try_sys_enter(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

struct Regs(*const u8);

impl Regs {
    /// Arguments 0, 1 and 2.
    #[inline(always)]
    fn first3(&self) -> [u64; 3] {
        [self.arg(0), self.arg(1), self.arg(2)]
    }

    #[inline(always)]
    fn arg(&self, n: usize) -> u64 {
        // SAFETY: `regs` is the tracepoint's typed `struct pt_regs *`: the verifier checks
        // each load against its BTF and turns it into a fault-safe kernel load.
        unsafe { core::ptr::read(self.0.add(ARG_OFFSETS[n]).cast::<u64>()) }
    }
}

#[inline(always)]
fn try_sys_enter(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    let id: i64 = ctx.arg(1);
    let regs = Regs(ctx.arg::<*const u8>(0));
    match id {
        nr::OPENAT => {
            let [dirfd, path, flags] = regs.first3();
            open(dirfd as i32, path, flags as u32)
        }
        nr::OPEN => open(AT_FDCWD, regs.arg(0), regs.arg(1) as u32),
        nr::CREAT => open(AT_FDCWD, regs.arg(0), O_CREAT | O_WRONLY | O_TRUNC),
        nr::OPENAT2 => {
            // `struct open_how` starts with `__u64 flags`.
            // SAFETY: a probe read of user memory; failure means no flags.
            let how = regs.arg(2) as *const u64;
            let flags = unsafe { bpf_probe_read_user(how) }.unwrap_or(0);
            open(regs.arg(0) as i32, regs.arg(1), flags as u32)
        }
        nr::UNLINK => path_op(FileOp::Unlink, AT_FDCWD, regs.arg(0), 0),
        nr::UNLINKAT => path_op(FileOp::Unlink, regs.arg(0) as i32, regs.arg(1), 0),
        nr::CHMOD => path_op(FileOp::Chmod, AT_FDCWD, regs.arg(0), regs.arg(1) as u32),
        nr::FCHMODAT | nr::FCHMODAT2 => path_op(
            FileOp::Chmod,
            regs.arg(0) as i32,
            regs.arg(1),
            regs.arg(2) as u32,
        ),
        nr::RENAME => rename(AT_FDCWD, regs.arg(0), AT_FDCWD, regs.arg(1)),
        nr::RENAMEAT | nr::RENAMEAT2 => rename(
            regs.arg(0) as i32,
            regs.arg(1),
            regs.arg(2) as i32,
            regs.arg(3),
        ),
        _ => Ok(0),
    }
}

/// Leaves early for the daemon itself and for unwatched cgroups.
#[inline(always)]
fn skip_current() -> bool {
    is_daemon(current_tgid()) || !current_cgroup_watched()
}

/// Classifies the path at `user_path` by its first bytes: one bounded read onto the stack and
/// one LPM lookup.
#[inline(always)]
fn classify(user_path: u64) -> u32 {
    let mut key = Key::<PathClassData>::new(0, [0; PATH_CLASS_KEY_BYTES]);
    // SAFETY: the helper writes at most `PATH_CLASS_KEY_BYTES` bytes into `key.data`.
    let read = unsafe {
        bpf_probe_read_user_str(
            key.data.as_mut_ptr().cast(),
            PATH_CLASS_KEY_BYTES as u32,
            user_path as *const _,
        )
    };
    if read <= 0 {
        return 0;
    }
    // `read` counts the NUL; a path longer than the key loses its last byte to the NUL, so the
    // key then covers only the bytes that are really the path's.
    let bytes = if read as usize >= PATH_CLASS_KEY_BYTES {
        PATH_CLASS_KEY_BYTES - 1
    } else {
        read as usize
    };
    key.prefix_len = (bytes * 8) as u32;
    PATH_CLASS.get(&key).copied().unwrap_or(0)
}

#[inline(always)]
fn write_intent(flags: u32) -> bool {
    flags & O_ACCMODE != 0 || flags & (O_CREAT | O_TRUNC) != 0
}

/// Whether the path's first eight bytes could start a read-sensitive prefix: one short user
/// read and a few compares, no map lookup.
#[inline(always)]
fn may_be_read_sensitive(user_path: u64) -> bool {
    // SAFETY: reading a global set at load time.
    let len = unsafe { core::ptr::read_volatile(&READ_PREFILTER.len) };
    if len == ReadPrefilter::DISABLED {
        return true;
    }
    if len == 0 {
        // No read-sensitive prefix configured: no user read at all.
        return false;
    }
    let mut bytes = [0u8; 16];
    // SAFETY: the helper writes at most 9 bytes (8 and the NUL) into `bytes`.
    let read =
        unsafe { bpf_probe_read_user_str(bytes.as_mut_ptr().cast(), 9, user_path as *const _) };
    if read <= 0 {
        // The kernel cannot read it either: the open fails with EFAULT.
        return false;
    }
    let word = u64::from_ne_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
    ]);
    for i in 0..READ_PREFILTER_SLOTS {
        if i as u32 >= len {
            break;
        }
        // SAFETY: reading a global set at load time; `i` is in bounds.
        let prefix = unsafe { core::ptr::read_volatile(&READ_PREFILTER.words[i]) };
        if word & prefix.mask == prefix.value {
            return true;
        }
    }
    false
}

#[inline(always)]
fn open(dirfd: i32, user_path: u64, flags: u32) -> Result<i32, i32> {
    let write = write_intent(flags);
    if !write {
        // The user read below is the dearest step of a read-only open (a user-access window per
        // call); outside `watch: all`, an unwatched task leaves before it. Under `all` every
        // task is watched and the check would be pure cost.
        if !watching_all() && !current_cgroup_watched() {
            return Ok(0);
        }
        if !may_be_read_sensitive(user_path) {
            return Ok(0);
        }
    }
    if skip_current() {
        return Ok(0);
    }
    let class = classify(user_path);
    if class & path_class::EXCLUDED != 0 || (!write && class & path_class::READ_SENSITIVE == 0) {
        return Ok(0);
    }
    let event = scratch(&FILE_SCRATCH)?;
    fill_file(event, FileOp::Open, dirfd, user_path, class, flags);
    if write {
        event.flags |= file_flags::WRITE_INTENT;
        if suppress_repeat(event) {
            return Ok(0);
        }
    }
    output(event, EventKind::File);
    Ok(0)
}

#[inline(always)]
fn path_op(op: FileOp, dirfd: i32, user_path: u64, mode: u32) -> Result<i32, i32> {
    if skip_current() {
        return Ok(0);
    }
    let class = classify(user_path);
    if !is_sensitive(class) {
        return Ok(0);
    }
    let event = scratch(&FILE_SCRATCH)?;
    fill_file(event, op, dirfd, user_path, class, mode);
    output(event, EventKind::File);
    Ok(0)
}

#[inline(always)]
fn rename(old_dirfd: i32, old: u64, new_dirfd: i32, new: u64) -> Result<i32, i32> {
    if skip_current() {
        return Ok(0);
    }
    let class = classify(old) | classify(new);
    if !is_sensitive(class) {
        return Ok(0);
    }
    let event = scratch(&RENAME_SCRATCH)?;
    fill_file(&mut event.file, FileOp::Rename, old_dirfd, old, class, 0);
    event.target_dirfd = new_dirfd;
    let (len, truncated) = read_path(new, &mut event.target);
    event.target_len = len;
    if truncated {
        event.file.flags |= file_flags::PATH_TRUNCATED;
    }
    event.file.header.kind = EventKind::Rename as u32;
    if EVENTS.output::<RenameEvent>(event, 0).is_err() {
        count_lost(EventKind::Rename);
    }
    Ok(0)
}

#[inline(always)]
fn is_sensitive(class: u32) -> bool {
    class & path_class::EXCLUDED == 0
        && class & (path_class::SENSITIVE_WRITE | path_class::READ_SENSITIVE) != 0
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

#[inline(always)]
fn fill_file(
    event: &mut FileEvent,
    op: FileOp,
    dirfd: i32,
    user_path: u64,
    class: u32,
    flags: u32,
) {
    fill_header(&mut event.header, EventKind::File);
    event.op = op as u32;
    event.flags = 0;
    event.class = class;
    event.open_flags = flags;
    event.dirfd = dirfd;
    event.suppressed = 0;
    event._pad = 0;
    let (len, truncated) = read_path(user_path, &mut event.path);
    event.path_len = len;
    if truncated {
        event.flags |= file_flags::PATH_TRUNCATED;
    }
    if event.path[0] != b'/' {
        event.flags |= file_flags::RELATIVE;
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

#[inline(always)]
fn fnv1a(bytes: &[u8; PATH_MAX_BYTES], len: u32) -> u64 {
    let mut hash = FNV_OFFSET;
    for (i, byte) in bytes.iter().enumerate() {
        if i as u32 >= len {
            break;
        }
        hash = (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME);
    }
    hash
}

#[inline(always)]
fn output(event: &FileEvent, kind: EventKind) {
    if EVENTS.output::<FileEvent>(event, 0).is_err() {
        count_lost(kind);
    }
}
