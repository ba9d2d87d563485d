//! Process lifecycle: `raw_tracepoint/sched_process_exec` and `raw_tracepoint/sched_process_exit`.
//!
//! Exec is taken after the new image is in place, so only successful execs are reported, and the
//! argument vector is read from the new process's own stack (`mm->arg_start..arg_end`).

use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_probe_read_kernel_str, bpf_probe_read_user},
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use detector_common::{
    ARGS_MAX_BYTES, EventKind, ExecEvent, ExitEvent, FILENAME_MAX_BYTES, MNT_INTERNAL, Stat,
    exec_flags,
    linux::{AF_INET, AF_INET6, S_IFMT, S_IFSOCK},
};

use crate::common::{
    EVENTS, count, count_lost, current_cgroup_watched, current_task, current_tgid, fill_header,
    is_daemon, offset, wakeup_flags,
};

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(ctx: RawTracePointContext) -> i32 {
    match try_exec(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// `sched_process_exit(struct task_struct *p, ...)`.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    match try_exit(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

#[inline(always)]
fn try_exec(ctx: &RawTracePointContext) -> Result<i32, i32> {
    if is_daemon(current_tgid()) || !current_cgroup_watched() {
        return Ok(0);
    }
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count_lost(EventKind::Exec);
        return Ok(0);
    };
    let event = entry.as_mut_ptr();
    // SAFETY: the reservation is `size_of::<ExecEvent>()` bytes and exclusively ours until
    // submitted or discarded; every field is written below before submission.
    let event = unsafe { &mut *event };
    fill_header(&mut event.header, EventKind::Exec);
    let task = current_task();
    event.flags = if has_tty(task) { exec_flags::TTY } else { 0 };
    event._pad = 0;
    event.parent_cgroup_id = parent_cgroup_id(task).unwrap_or(0);

    let bprm: *const u8 = ctx.arg(2);
    event.flags |= nameless(bprm);
    event.flags |= stdio_sockets(task);
    let filename_at = offset!(bprm_filename) as usize;
    // SAFETY: probe reads of kernel memory; a bad address returns an error.
    let filename: *const u8 =
        unsafe { bpf_probe_read_kernel(bprm.add(filename_at).cast()) }.unwrap_or(core::ptr::null());
    // SAFETY: the helper writes at most `FILENAME_MAX_BYTES` into `event.filename`.
    let read = unsafe {
        bpf_probe_read_kernel_str(
            event.filename.as_mut_ptr().cast(),
            FILENAME_MAX_BYTES as u32,
            filename.cast(),
        )
    };
    if read > 0 {
        event.filename_len = read as u32 - 1;
        if read as usize >= FILENAME_MAX_BYTES {
            event.flags |= exec_flags::FILENAME_TRUNCATED;
        }
    } else {
        event.filename_len = 0;
        event.filename[0] = 0;
        count(Stat::ReadErrors);
    }

    event.args_len = 0;
    match args_range(task) {
        Some((start, end)) if end > start => {
            let mut len = end - start;
            if len > ARGS_MAX_BYTES as u64 {
                len = ARGS_MAX_BYTES as u64;
                event.flags |= exec_flags::ARGS_TRUNCATED;
            }
            // SAFETY: `len` is at most `ARGS_MAX_BYTES`, the size of `event.args`.
            let ret = unsafe {
                bpf_probe_read_user(
                    event.args.as_mut_ptr().cast(),
                    len as u32,
                    start as *const _,
                )
            };
            if ret == 0 {
                event.args_len = len as u32;
            } else {
                event.flags |= exec_flags::ARGS_UNREADABLE;
                count(Stat::ReadErrors);
            }
        }
        _ => event.flags |= exec_flags::ARGS_UNREADABLE,
    }
    entry.submit(wakeup_flags());
    Ok(0)
}

/// `current->mm->arg_start` and `arg_end`.
#[inline(always)]
fn args_range(task: *const u8) -> Option<(u64, u64)> {
    let task_mm = offset!(task_mm);
    if task_mm == 0 {
        return None;
    }
    let (start_at, end_at) = (offset!(mm_arg_start) as usize, offset!(mm_arg_end) as usize);
    // SAFETY: probe reads of kernel memory; a bad address returns an error.
    unsafe {
        let mm: *const u8 = bpf_probe_read_kernel(task.add(task_mm as usize).cast()).ok()?;
        let start: u64 = bpf_probe_read_kernel(mm.add(start_at).cast()).ok()?;
        let end: u64 = bpf_probe_read_kernel(mm.add(end_at).cast()).ok()?;
        Some((start, end))
    }
}

/// `current->real_parent->cgroups->dfl_cgrp->kn->id`: the parent's cgroup2 id.
#[inline(always)]
fn parent_cgroup_id(task: *const u8) -> Option<u64> {
    let parent_at = offset!(task_real_parent) as usize;
    if parent_at == 0 {
        return None;
    }
    let (cgroups_at, dfl_at, kn_at, id_at) = (
        offset!(task_cgroups) as usize,
        offset!(css_set_dfl_cgrp) as usize,
        offset!(cgroup_kn) as usize,
        offset!(kernfs_node_id) as usize,
    );
    // SAFETY: probe reads of kernel memory; a bad address returns an error.
    unsafe {
        let parent: *const u8 = bpf_probe_read_kernel(task.add(parent_at).cast()).ok()?;
        let cgroups: *const u8 = bpf_probe_read_kernel(parent.add(cgroups_at).cast()).ok()?;
        let cgroup: *const u8 = bpf_probe_read_kernel(cgroups.add(dfl_at).cast()).ok()?;
        let kn: *const u8 = bpf_probe_read_kernel(cgroup.add(kn_at).cast()).ok()?;
        bpf_probe_read_kernel::<u64>(kn.add(id_at).cast()).ok()
    }
}

/// [`exec_flags::FILELESS`] when the executable `bprm->file` is on a kernel-internal mount (a
/// memfd on the shmem mount), [`exec_flags::DELETED`] when it was unlinked (no link left).
#[inline(always)]
fn nameless(bprm: *const u8) -> u32 {
    let (file_at, path_at) = (offset!(bprm_file) as usize, offset!(file_path) as usize);
    let (mnt_at, flags_at) = (offset!(path_mnt) as usize, offset!(vfsmount_flags) as usize);
    let (inode_at, nlink_at) = (offset!(file_inode) as usize, offset!(inode_nlink) as usize);
    // SAFETY: probe reads of kernel memory; a bad address returns an error.
    unsafe {
        let Ok(file) = bpf_probe_read_kernel::<*const u8>(bprm.add(file_at).cast()) else {
            return 0;
        };
        if let Ok(mnt) = bpf_probe_read_kernel::<*const u8>(file.add(path_at + mnt_at).cast())
            && bpf_probe_read_kernel::<u32>(mnt.add(flags_at).cast())
                .is_ok_and(|flags| flags & MNT_INTERNAL != 0)
        {
            return exec_flags::FILELESS;
        }
        let Ok(inode) = bpf_probe_read_kernel::<*const u8>(file.add(inode_at).cast()) else {
            return 0;
        };
        if bpf_probe_read_kernel::<u32>(inode.add(nlink_at).cast()).is_ok_and(|nlink| nlink == 0) {
            exec_flags::DELETED
        } else {
            0
        }
    }
}

/// [`exec_flags::STDIN_SOCKET`] and [`exec_flags::STDOUT_SOCKET`] for descriptors 0 and 1 of
/// `task` that are `AF_INET`/`AF_INET6` sockets: a program started on a network connection
/// (a reverse or bind shell).
#[inline(always)]
fn stdio_sockets(task: *const u8) -> u32 {
    let (files_at, fdt_at, fd_at) = (
        offset!(task_files) as usize,
        offset!(files_fdt) as usize,
        offset!(fdtable_fd) as usize,
    );
    // SAFETY: probe reads of kernel memory; a bad address returns an error.
    let table = unsafe {
        let Ok(files) = bpf_probe_read_kernel::<*const u8>(task.add(files_at).cast()) else {
            return 0;
        };
        let Ok(fdt) = bpf_probe_read_kernel::<*const u8>(files.add(fdt_at).cast()) else {
            return 0;
        };
        let Ok(fds) = bpf_probe_read_kernel::<*const u8>(fdt.add(fd_at).cast()) else {
            return 0;
        };
        let Ok(table) = bpf_probe_read_kernel::<[u64; 2]>(fds.cast()) else {
            return 0;
        };
        table
    };
    let mut flags = 0;
    if inet_socket(table[0] as *const u8) {
        flags |= exec_flags::STDIN_SOCKET;
    }
    if inet_socket(table[1] as *const u8) {
        flags |= exec_flags::STDOUT_SOCKET;
    }
    flags
}

/// Whether `file` is an `AF_INET`/`AF_INET6` socket.
#[inline(always)]
fn inet_socket(file: *const u8) -> bool {
    if file.is_null() {
        return false;
    }
    let (inode_at, mode_at) = (offset!(file_inode) as usize, offset!(inode_mode) as usize);
    let (data_at, sk_at, family_at) = (
        offset!(file_private_data) as usize,
        offset!(socket_sk) as usize,
        offset!(sock_family) as usize,
    );
    // SAFETY: probe reads of kernel memory; a bad address returns an error.
    unsafe {
        let Ok(inode) = bpf_probe_read_kernel::<*const u8>(file.add(inode_at).cast()) else {
            return false;
        };
        if !bpf_probe_read_kernel::<u16>(inode.add(mode_at).cast())
            .is_ok_and(|mode| u64::from(mode) & S_IFMT == S_IFSOCK)
        {
            return false;
        }
        let Ok(socket) = bpf_probe_read_kernel::<*const u8>(file.add(data_at).cast()) else {
            return false;
        };
        let Ok(sock) = bpf_probe_read_kernel::<*const u8>(socket.add(sk_at).cast()) else {
            return false;
        };
        bpf_probe_read_kernel::<u16>(sock.add(family_at).cast())
            .is_ok_and(|family| u64::from(family) == AF_INET || u64::from(family) == AF_INET6)
    }
}

/// `current->signal->tty != NULL`: the process has a controlling terminal.
#[inline(always)]
fn has_tty(task: *const u8) -> bool {
    let signal_at = offset!(task_signal) as usize;
    if signal_at == 0 {
        return false;
    }
    let tty_at = offset!(signal_tty) as usize;
    // SAFETY: probe reads of kernel memory; a bad address returns an error.
    unsafe {
        let Ok(signal) = bpf_probe_read_kernel::<*const u8>(task.add(signal_at).cast()) else {
            return false;
        };
        bpf_probe_read_kernel::<u64>(signal.add(tty_at).cast()).is_ok_and(|tty| tty != 0)
    }
}

#[inline(always)]
fn try_exit(ctx: &RawTracePointContext) -> Result<i32, i32> {
    // Every thread's exit, before any filter: `sys_exit`'s task cache relies on it.
    crate::kernel::count_thread_exit();
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    // Only the thread-group leader's exit is a process exit.
    if pid_tgid as u32 != (pid_tgid >> 32) as u32 {
        return Ok(0);
    }
    if is_daemon(current_tgid()) || !current_cgroup_watched() {
        return Ok(0);
    }
    let task: *const u8 = ctx.arg(0);
    let exit_code_at = offset!(task_exit_code) as usize;
    // SAFETY: a probe read of kernel memory; a bad address returns an error.
    let exit_code: u32 =
        unsafe { bpf_probe_read_kernel(task.add(exit_code_at).cast()) }.unwrap_or(0);
    let Some(mut entry) = EVENTS.reserve::<ExitEvent>(0) else {
        count_lost(EventKind::Exit);
        return Ok(0);
    };
    // SAFETY: the reservation is exclusively ours; every field is written before submission.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut event.header, EventKind::Exit);
    event.exit_code = exit_code;
    event._pad = 0;
    entry.submit(wakeup_flags());
    Ok(0)
}
