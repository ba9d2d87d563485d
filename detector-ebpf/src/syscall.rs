//! System calls other than file and network I/O that attacks make and workloads almost never
//! do ([`SyscallOp`]): ptrace, raw and packet sockets, mount and namespace changes, memfd
//! creation, module and BPF program loads, asking for uid 0, a socket dup'ed onto standard
//! I/O, io_uring set-up and device nodes. One program, `sys_exit_syscall`, reached by a tail
//! call from [`crate::sys_exit`] with its own verifier budget.
//!
//! Each call is filtered on its arguments first (a plain load each), so the frequent ones
//! (`socket`, `dup2`) cost a comparison or two when they are ordinary. Refused calls are
//! reported too: a container normally lacks the capability, and the attempt is the signal.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_user, generated::bpf_probe_read_user_str},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use detector_common::{
    EventKind, SYSCALL_AUX_BYTES, SYSCALL_TEXT_BYTES, Stat, SyscallEvent, SyscallOp,
    linux::{
        AF_INET, AF_INET6, AF_PACKET, S_IFBLK, S_IFCHR, S_IFMT, S_IFSOCK, SOCK_PACKET, SOCK_RAW,
        SOCK_TYPE_MASK,
    },
};

use crate::{
    common::{
        EVENTS, cgroup_watched, count, count_lost, fill_header, is_daemon, offset, wakeup_flags,
        watching_all,
    },
    kernel::Task,
    path::open_file,
    sys_exit::{Regs, nr},
};

const PTRACE_TRACEME: u64 = 0;
const PTRACE_ATTACH: u64 = 16;
const PTRACE_SEIZE: u64 = 0x4206;
const BPF_PROG_LOAD: u64 = 5;
/// `(uid_t)-1`: leave this id unchanged.
const UNCHANGED: u64 = u32::MAX as u64;
/// Offset of `flags` in `struct io_uring_params` (after `sq_entries` and `cq_entries`).
const IO_URING_PARAMS_FLAGS: usize = 8;

/// `tp_btf/sys_exit`, reached by a tail call from [`crate::sys_exit`]: the calls of
/// [`SyscallOp`].
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_syscall(ctx: BtfTracePointContext) -> i32 {
    match try_syscall(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// What to copy of a call's string arguments: user addresses, 0 for none.
struct Strings {
    text: u64,
    aux: u64,
}

const NO_STRINGS: Strings = Strings { text: 0, aux: 0 };

#[inline(always)]
fn try_syscall(ctx: &BtfTracePointContext) -> Result<i32, i32> {
    let regs = Regs::of(ctx);
    let ret: i64 = ctx.arg(1);
    let nr = regs.nr();
    let (op, args, strings) = match nr {
        nr::PTRACE => {
            let request = regs.arg(0);
            if request != PTRACE_ATTACH && request != PTRACE_SEIZE && request != PTRACE_TRACEME {
                return Ok(0);
            }
            (SyscallOp::Ptrace, [request, regs.arg(1), 0, 0], NO_STRINGS)
        }
        nr::SOCKET => {
            let [family, kind, protocol] = regs.first3();
            // Raw IP sockets and every packet socket; netlink's raw sockets (every `ip`,
            // `ss` and name lookup) are not raw access to the network.
            let kind_bits = kind & SOCK_TYPE_MASK;
            let inet = family == AF_INET || family == AF_INET6;
            if family != AF_PACKET && !(inet && (kind_bits == SOCK_RAW || kind_bits == SOCK_PACKET))
            {
                return Ok(0);
            }
            (SyscallOp::Socket, [family, kind, protocol, 0], NO_STRINGS)
        }
        nr::MOUNT => (
            SyscallOp::Mount,
            [regs.arg(3), 0, 0, 0],
            Strings {
                text: regs.arg(1),
                aux: regs.arg(2),
            },
        ),
        // The mount API of Linux 5.2 (util-linux 2.39 and later mount with it): creating a
        // filesystem context, cloning a tree, and attaching either. Their flags are not
        // `MS_*` ones: left out.
        nr::FSOPEN => (
            SyscallOp::Mount,
            [0; 4],
            Strings {
                text: 0,
                aux: regs.arg(0),
            },
        ),
        nr::OPEN_TREE => (
            SyscallOp::Mount,
            [0; 4],
            Strings {
                text: regs.arg(1),
                aux: 0,
            },
        ),
        nr::MOVE_MOUNT => (
            SyscallOp::Mount,
            [0; 4],
            Strings {
                text: regs.arg(3),
                aux: 0,
            },
        ),
        nr::UMOUNT2 => (
            SyscallOp::Umount,
            [regs.arg(1), 0, 0, 0],
            Strings {
                text: regs.arg(0),
                aux: 0,
            },
        ),
        nr::UNSHARE => (SyscallOp::Unshare, [regs.arg(0), 0, 0, 0], NO_STRINGS),
        nr::SETNS => (
            SyscallOp::Setns,
            [regs.arg(0), regs.arg(1), 0, 0],
            NO_STRINGS,
        ),
        nr::PIVOT_ROOT => (
            SyscallOp::PivotRoot,
            [0; 4],
            Strings {
                text: regs.arg(0),
                aux: 0,
            },
        ),
        nr::MEMFD_CREATE => (
            SyscallOp::MemfdCreate,
            [regs.arg(1), 0, 0, 0],
            Strings {
                text: regs.arg(0),
                aux: 0,
            },
        ),
        nr::INIT_MODULE => (SyscallOp::ModuleLoad, [0, regs.arg(1), 0, 0], NO_STRINGS),
        nr::FINIT_MODULE => (
            SyscallOp::ModuleLoad,
            [1, regs.arg(0), regs.arg(2), 0],
            NO_STRINGS,
        ),
        nr::BPF => {
            if regs.arg(0) != BPF_PROG_LOAD {
                return Ok(0);
            }
            // `union bpf_attr` starts with the program type for `BPF_PROG_LOAD`.
            // SAFETY: a probe read of user memory; failure reads as type 0.
            let prog_type = unsafe { bpf_probe_read_user(regs.arg(1) as *const u32) }.unwrap_or(0);
            (
                SyscallOp::BpfProgLoad,
                [BPF_PROG_LOAD, u64::from(prog_type), 0, 0],
                NO_STRINGS,
            )
        }
        nr::SETUID | nr::SETREUID | nr::SETRESUID => {
            let [a, b, c] = regs.first3();
            let ids = match nr {
                nr::SETUID => [a & UNCHANGED, a & UNCHANGED, a & UNCHANGED],
                nr::SETREUID => [a & UNCHANGED, b & UNCHANGED, UNCHANGED],
                _ => [a & UNCHANGED, b & UNCHANGED, c & UNCHANGED],
            };
            if ids[0] != 0 && ids[1] != 0 && ids[2] != 0 {
                return Ok(0);
            }
            (SyscallOp::Setuid, [ids[0], ids[1], ids[2], 0], NO_STRINGS)
        }
        nr::DUP2 | nr::DUP3 => {
            let (old_fd, new_fd) = (regs.arg(0), regs.arg(1));
            if ret < 0 || new_fd > 2 {
                return Ok(0);
            }
            let Some(family) = inet_socket_family(Task::current(), old_fd as i64) else {
                return Ok(0);
            };
            (
                SyscallOp::DupSocket,
                [old_fd, new_fd, family, 0],
                NO_STRINGS,
            )
        }
        nr::IO_URING_SETUP => {
            let params = regs.arg(1) as *const u8;
            // SAFETY: a probe read of user memory; failure reads as no flags.
            let flags = unsafe {
                bpf_probe_read_user(params.wrapping_add(IO_URING_PARAMS_FLAGS).cast::<u32>())
            }
            .unwrap_or(0);
            (
                SyscallOp::IoUringSetup,
                [regs.arg(0), u64::from(flags), 0, 0],
                NO_STRINGS,
            )
        }
        nr::MKNOD | nr::MKNODAT => {
            let (path, mode, dev) = if nr == nr::MKNOD {
                (regs.arg(0), regs.arg(1), regs.arg(2))
            } else {
                (regs.arg(1), regs.arg(2), regs.arg(3))
            };
            let kind = mode & S_IFMT;
            if kind != S_IFBLK && kind != S_IFCHR {
                return Ok(0);
            }
            (
                SyscallOp::Mknod,
                [mode, dev, 0, 0],
                Strings { text: path, aux: 0 },
            )
        }
        _ => return Ok(0),
    };
    let task = Task::current();
    if is_daemon(task.tgid()) || (!watching_all() && !cgroup_watched(task.cgroup_id())) {
        return Ok(0);
    }
    let Some(mut entry) = EVENTS.reserve::<SyscallEvent>(0) else {
        count_lost(EventKind::Syscall);
        return Ok(0);
    };
    // SAFETY: the reservation is `size_of::<SyscallEvent>()` bytes and exclusively ours until
    // submitted; every field is written below before submission.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut event.header, EventKind::Syscall);
    event.op = op as u32;
    event.nr = nr as u32;
    event.result = ret;
    event.args = args;
    event.text_len = read_str(strings.text, event.text.as_mut_ptr(), SYSCALL_TEXT_BYTES);
    event.aux_len = read_str(strings.aux, event.aux.as_mut_ptr(), SYSCALL_AUX_BYTES);
    entry.submit(wakeup_flags());
    Ok(0)
}

/// Copies the user string at `from` (none for 0) to `to`, `size` bytes at most with the NUL;
/// its length without the NUL, 0 for none or unreadable (with `to` empty).
#[inline(always)]
fn read_str(from: u64, to: *mut u8, size: usize) -> u32 {
    if from != 0 {
        // SAFETY: the helper writes at most `size` bytes at `to`, a buffer of that size.
        let read = unsafe { bpf_probe_read_user_str(to.cast(), size as u32, from as *const _) };
        if read > 0 {
            return read as u32 - 1;
        }
        count(Stat::ReadErrors);
    }
    // SAFETY: `to` has at least one byte.
    unsafe { *to = 0 };
    0
}

/// The address family of the socket behind descriptor `fd` of `task`, when it is an
/// `AF_INET` or `AF_INET6` socket.
#[inline(always)]
fn inet_socket_family(task: Task, fd: i64) -> Option<u64> {
    let file = open_file(task, fd)?;
    let inode = file.ptr(offset!(file_inode));
    if u64::from(inode.u16_at(offset!(inode_mode))) & S_IFMT != S_IFSOCK {
        return None;
    }
    // `private_data` is untyped: the socket and its `sock` are read with probe reads.
    let socket = file.u64_at(offset!(file_private_data)) as *const u8;
    let (sk_at, family_at) = (offset!(socket_sk) as usize, offset!(sock_family) as usize);
    // SAFETY: probe reads of kernel memory; a bad address returns an error.
    let family = unsafe {
        let sock: *const u8 = bpf_probe_read_kernel(socket.wrapping_add(sk_at).cast()).ok()?;
        bpf_probe_read_kernel::<u16>(sock.wrapping_add(family_at).cast()).ok()?
    };
    let family = u64::from(family);
    (family == AF_INET || family == AF_INET6).then_some(family)
}
