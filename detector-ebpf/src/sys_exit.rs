//! The `tp_btf/sys_exit` hook: one program on every system call's exit, dispatching on the
//! syscall number.
//!
//! A BTF-enabled raw tracepoint needs no tracefs and costs the least of the hooks that load on
//! this kernel (no LSM, fentry or kprobes here). It fires for every syscall of every task, so
//! the program leaves at once for syscalls it does not handle. Its `pt_regs` argument is typed:
//! the syscall number and arguments are read with plain loads, not a helper call per argument.
//!
//! Opens are handled inline (a read-only open's check is the hot path, see [`crate::file`]);
//! everything else it reports is a tail call into a program of its own ([`PATH_OPS`]), each
//! verified with its own budget: path operations ([`crate::file`]) and the other system calls
//! ([`crate::syscall`]). A syscall in neither list costs the dispatch's comparisons.

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{btf_tracepoint, map},
    maps::ProgramArray,
    programs::BtfTracePointContext,
};
use detector_common::{
    PATH_OP_PROGRAMS, PATH_OP_RENAME, PATH_OP_SYSCALL, PATH_OP_UNLINK_CHMOD, Stat, linux::O_TRUNC,
};

use crate::{
    common::count,
    file::{O_CREAT, O_WRONLY, open, read_only_open, write_intent},
    path::AT_FDCWD,
};

/// The programs [`sys_exit`] tail-calls, by index ([`PATH_OP_PROGRAMS`]); filled by user space
/// at load.
#[map(name = "PATH_OPS")]
pub static PATH_OPS: ProgramArray =
    ProgramArray::with_max_entries(PATH_OP_PROGRAMS.len() as u32, 0);

/// Syscall numbers (x86_64: arch/x86/entry/syscalls/syscall_64.tbl).
#[cfg(bpf_target_arch = "x86_64")]
pub mod nr {
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
    pub const TRUNCATE: i64 = 76;
    pub const LINK: i64 = 86;
    pub const LINKAT: i64 = 265;
    pub const SYMLINK: i64 = 88;
    pub const SYMLINKAT: i64 = 266;
    pub const PTRACE: i64 = 101;
    pub const SOCKET: i64 = 41;
    pub const MOUNT: i64 = 165;
    pub const UMOUNT2: i64 = 166;
    pub const UNSHARE: i64 = 272;
    pub const SETNS: i64 = 308;
    pub const PIVOT_ROOT: i64 = 155;
    pub const MEMFD_CREATE: i64 = 319;
    pub const INIT_MODULE: i64 = 175;
    pub const FINIT_MODULE: i64 = 313;
    pub const BPF: i64 = 321;
    pub const SETUID: i64 = 105;
    pub const SETREUID: i64 = 113;
    pub const SETRESUID: i64 = 117;
    pub const DUP2: i64 = 33;
    pub const DUP3: i64 = 292;
    pub const IO_URING_SETUP: i64 = 425;
    pub const MKNOD: i64 = 133;
    pub const MKNODAT: i64 = 259;
    pub const OPEN_TREE: i64 = 428;
    pub const MOVE_MOUNT: i64 = 429;
    pub const FSOPEN: i64 = 430;
}

/// Syscall numbers (arm64 uses include/uapi/asm-generic/unistd.h; no legacy open, unlink,
/// dup2, mknod...: negative numbers that never match).
#[cfg(bpf_target_arch = "aarch64")]
pub mod nr {
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
    pub const TRUNCATE: i64 = 45;
    pub const LINK: i64 = -6;
    pub const LINKAT: i64 = 37;
    pub const SYMLINK: i64 = -7;
    pub const SYMLINKAT: i64 = 36;
    pub const PTRACE: i64 = 117;
    pub const SOCKET: i64 = 198;
    pub const MOUNT: i64 = 40;
    pub const UMOUNT2: i64 = 39;
    pub const UNSHARE: i64 = 97;
    pub const SETNS: i64 = 268;
    pub const PIVOT_ROOT: i64 = 41;
    pub const MEMFD_CREATE: i64 = 279;
    pub const INIT_MODULE: i64 = 105;
    pub const FINIT_MODULE: i64 = 273;
    pub const BPF: i64 = 280;
    pub const SETUID: i64 = 146;
    pub const SETREUID: i64 = 145;
    pub const SETRESUID: i64 = 147;
    pub const DUP2: i64 = -8;
    pub const DUP3: i64 = 24;
    pub const IO_URING_SETUP: i64 = 425;
    pub const MKNOD: i64 = -9;
    pub const MKNODAT: i64 = 33;
    pub const OPEN_TREE: i64 = 428;
    pub const MOVE_MOUNT: i64 = 429;
    pub const FSOPEN: i64 = 430;
}

/// Byte offsets in `struct pt_regs` of the syscall arguments, as they stand at syscall exit.
#[cfg(bpf_target_arch = "x86_64")]
const ARG_OFFSETS: [usize; 5] = [112, 104, 96, 56, 72]; // di, si, dx, r10, r8
/// arm64 returns the result in x0; the first argument survives in `orig_x0`.
#[cfg(bpf_target_arch = "aarch64")]
const ARG_OFFSETS: [usize; 5] = [272, 8, 16, 24, 32]; // orig_x0, x1..x4

/// The syscall's registers: the tracepoint's typed `struct pt_regs *`.
pub struct Regs(pub *const u8);

impl Regs {
    /// The registers of the syscall whose exit `ctx` is.
    #[inline(always)]
    pub fn of(ctx: &BtfTracePointContext) -> Self {
        Self(ctx.arg::<*const u8>(0))
    }

    /// Arguments 0, 1 and 2.
    #[inline(always)]
    pub fn first3(&self) -> [u64; 3] {
        [self.arg(0), self.arg(1), self.arg(2)]
    }

    /// Argument `n` (0 to 4).
    #[inline(always)]
    pub fn arg(&self, n: usize) -> u64 {
        // SAFETY: `regs` is the tracepoint's typed `struct pt_regs *`: the verifier checks
        // each load against its BTF and turns it into a fault-safe kernel load.
        unsafe { core::ptr::read(self.0.add(ARG_OFFSETS[n]).cast::<u64>()) }
    }

    /// The syscall number, as `syscall_get_nr` reads it.
    #[cfg(bpf_target_arch = "x86_64")]
    #[inline(always)]
    pub fn nr(&self) -> i64 {
        // SAFETY: as above; `orig_ax`.
        unsafe { core::ptr::read(self.0.add(120).cast::<i64>()) }
    }

    /// The syscall number, as `syscall_get_nr` reads it.
    #[cfg(bpf_target_arch = "aarch64")]
    #[inline(always)]
    pub fn nr(&self) -> i64 {
        // SAFETY: as above; `syscallno`.
        i64::from(unsafe { core::ptr::read(self.0.add(280).cast::<i32>()) })
    }
}

/// The directory fd, path and flags of an open of any of the four kinds, or `$other` for
/// other syscalls.
///
/// A macro, not a function returning an `Option`: the same match through such a function took
/// `sys_exit` past the verifier's 1M-instruction limit (measured: over 1,000,000 against
/// ~660k; LLVM lays the code out differently).
macro_rules! open_args {
    ($regs:expr, $nr:expr, $other:expr) => {
        match $nr {
            nr::OPENAT => {
                let [dirfd, path, flags] = $regs.first3();
                (dirfd as i32, path, flags as u32)
            }
            nr::OPEN => (AT_FDCWD, $regs.arg(0), $regs.arg(1) as u32),
            nr::CREAT => (AT_FDCWD, $regs.arg(0), O_CREAT | O_WRONLY | O_TRUNC),
            nr::OPENAT2 => {
                // `struct open_how` starts with `__u64 flags`.
                // SAFETY: a probe read of user memory; failure means no flags.
                let how = $regs.arg(2) as *const u64;
                let flags = unsafe { bpf_probe_read_user(how) }.unwrap_or(0);
                ($regs.arg(0) as i32, $regs.arg(1), flags as u32)
            }
            _ => $other,
        }
    };
}
pub(crate) use open_args;

/// `tp_btf/sys_exit(struct pt_regs *regs, long ret)`.
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit(ctx: BtfTracePointContext) -> i32 {
    match try_sys_exit(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

#[inline(always)]
fn try_sys_exit(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    let regs = Regs::of(ctx);
    let ret: i64 = ctx.arg(1);
    // The four opens share one read-only check and one call, so that each is verified once
    // (a second copy of the check for `openat` alone cost the verifier 167k instructions and
    // measured no faster).
    let (dirfd, _path, flags) = open_args!(regs, regs.nr(), return other(ctx, regs.nr()));
    if !write_intent(flags) {
        return read_only_open(ctx, &regs, dirfd, flags, ret);
    }
    Ok(open(ctx, dirfd, flags, ret))
}

/// Everything but opens: tail calls into programs of their own, so that joining a relative
/// path to its directory (a climb and a path build) and the other calls' checks are verified
/// with their own budget, not in `sys_exit`'s. Each filters on its arguments first.
#[inline(always)]
fn other(ctx: &BtfTracePointContext, nr: i64) -> Result<i32, i32> {
    let index = match nr {
        nr::UNLINK | nr::UNLINKAT | nr::CHMOD | nr::FCHMODAT | nr::FCHMODAT2 | nr::TRUNCATE => {
            PATH_OP_UNLINK_CHMOD
        }
        nr::RENAME
        | nr::RENAMEAT
        | nr::RENAMEAT2
        | nr::LINK
        | nr::LINKAT
        | nr::SYMLINK
        | nr::SYMLINKAT => PATH_OP_RENAME,
        nr::PTRACE
        | nr::SOCKET
        | nr::MOUNT
        | nr::UMOUNT2
        | nr::UNSHARE
        | nr::SETNS
        | nr::PIVOT_ROOT
        | nr::MEMFD_CREATE
        | nr::INIT_MODULE
        | nr::FINIT_MODULE
        | nr::BPF
        | nr::SETUID
        | nr::SETREUID
        | nr::SETRESUID
        | nr::DUP2
        | nr::DUP3
        | nr::IO_URING_SETUP
        | nr::MKNOD
        | nr::MKNODAT
        | nr::OPEN_TREE
        | nr::MOVE_MOUNT
        | nr::FSOPEN => PATH_OP_SYSCALL,
        _ => return Ok(0),
    };
    // SAFETY: jumps to a program of the same type on the same hook, with the same context;
    // nothing here needs to run after it. It returns only when the slot is empty, which user
    // space never leaves it while the programs are attached.
    unsafe { PATH_OPS.tail_call(ctx, index) };
    count(Stat::TailCallFailures);
    Ok(0)
}
