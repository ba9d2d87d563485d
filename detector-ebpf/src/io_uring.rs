//! Opens submitted through an io_uring ring: `tp_btf/io_uring_complete`.
//!
//! An operation submitted to a ring makes no system call of its own, so `sys_exit` never sees
//! it; its completion does pass this tracepoint, in the submitter's thread or in one of its
//! `iou-wrk` threads (same process, same descriptor table, same cgroup). An `OPENAT` or
//! `OPENAT2` that returned a descriptor goes through the same check as an `openat(2)`
//! ([`file::report_opened`]): its path resolved from the file itself, reported when opened
//! with write intent or read-sensitive, flagged `IO_URING`.
//!
//! The request (`void *`) and the completion entry are read with probe reads at offsets user
//! space took from BTF ([`IoUringLayout`]), the same way in both builds. An open into a direct
//! descriptor (`file_slot`) has no descriptor to resolve: it is counted as an unresolved path.
//! By the time of completion the request has released its path argument, so a failed open is
//! not reported. Kernels before 5.19 have no request in this tracepoint: the daemon does not
//! load the program there, and says so.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use detector_common::{IoUringLayout, Stat, file_flags, io_uring_op};

use crate::{
    common::count,
    file::{Opened, report_opened, skip, write_intent},
    kernel::Task,
    path,
};

/// Where the tracepoint's arguments and the request's fields are, set by user space at load.
#[unsafe(no_mangle)]
static IO_URING: IoUringLayout = IoUringLayout {
    res_arg: 0,
    res_in_cqe: 0,
    cqe_res: 0,
    req_opcode: 0,
    req_cmd: 0,
    open_dfd: 0,
    open_file_slot: 0,
    open_flags: 0,
};

/// A member of [`IO_URING`].
macro_rules! layout {
    ($member:ident) => {
        // SAFETY: a member of a global set at load time; volatile so it is not folded.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(IO_URING.$member)) }
    };
}

/// The `T` at `addr`, or `None` when it cannot be read.
#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    // SAFETY: a probe read of kernel memory; a bad address returns an error.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// `tp_btf/io_uring_complete(ctx, req, ...)`.
#[btf_tracepoint(function = "io_uring_complete")]
pub fn io_uring_complete(ctx: BtfTracePointContext) -> i32 {
    match try_io_uring_complete(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

#[inline(always)]
fn try_io_uring_complete(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    let req: u64 = ctx.arg(1);
    let Some(opcode) = read::<u8>(req + u64::from(layout!(req_opcode))) else {
        return Ok(0);
    };
    if opcode != io_uring_op::OPENAT && opcode != io_uring_op::OPENAT2 {
        return Ok(0);
    }
    // The argument's index is a constant to the verifier (a frozen global): one of the two
    // branches is walked, the one whose argument this kernel's tracepoint has.
    let res = if layout!(res_in_cqe) != 0 {
        let cqe: u64 = ctx.arg(2);
        read::<i32>(cqe + u64::from(layout!(cqe_res))).unwrap_or(-1)
    } else {
        let res: i64 = ctx.arg(3);
        res as i32
    };
    if res < 0 {
        return Ok(0);
    }
    let cmd = req + u64::from(layout!(req_cmd));
    let flags = read::<u64>(cmd + u64::from(layout!(open_flags))).unwrap_or(0) as u32;
    let write = write_intent(flags);
    if !write && !path::read_sensitive_configured() {
        return Ok(0);
    }
    let task = Task::current();
    if skip(task) {
        return Ok(0);
    }
    if read::<u32>(cmd + u64::from(layout!(open_file_slot))).unwrap_or(0) != 0 {
        // Installed into the ring's own table: no descriptor of the process to resolve.
        count(Stat::UnresolvedPaths);
        return Ok(0);
    }
    let fd = i64::from(res);
    if !write && !path::may_be_read_sensitive(task, path::open_file(task, fd)) {
        return Ok(0);
    }
    let dirfd = read::<i32>(cmd + u64::from(layout!(open_dfd))).unwrap_or(0);
    if report_opened(task, dirfd, flags, fd, file_flags::IO_URING)? == Opened::Unresolved {
        count(Stat::UnresolvedPaths);
    }
    Ok(0)
}
