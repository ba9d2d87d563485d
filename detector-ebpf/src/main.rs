//! The detector's kernel programs.
//!
//! - `sys_exit`: `tp_btf/sys_exit`, the dispatch on the syscall number; opens inline, the
//!   rest by tail call.
//! - `file`: file opens with write intent, opens of read-sensitive files; unlink, truncate,
//!   chmod, rename, link and symlink of sensitive paths, logs and history, and opens reported
//!   with the path as passed, in `sys_exit_path_op`, `sys_exit_rename` and
//!   `sys_exit_as_passed`, tail-called from `sys_exit`; `path` resolves an opened file's path
//!   in the kernel, and `kernel` reads kernel memory (typed loads or probe reads).
//! - `io_uring`: `tp_btf/io_uring_complete`: opens submitted through an io_uring ring, which
//!   make no system call, checked as an `openat(2)` is.
//! - `syscall`: `sys_exit_syscall`, tail-called from `sys_exit`: ptrace, raw sockets, mounts
//!   and namespaces, memfd, module and BPF loads, setuid to 0, sockets onto standard I/O,
//!   io_uring set-up, device nodes.
//! - `process`: `raw_tracepoint/sched_process_exec` and `sched_process_exit`.
//! - `net`: `cgroup/connect4`, `cgroup/connect6` (outbound connects) and `cgroup_skb/egress`
//!   (bytes and packets per cgroup, counted in the kernel).
//! - `noop`: do-nothing programs on the same tracepoints, the floor for benchmarks.
//!
//! Programs are thin: each filters before copying anything, reserves or outputs its record
//! straight into the ring buffer, and counts every record it could not deliver in `STATS`.
#![no_std]
#![no_main]
// Inline assembly on the BPF target, for the one kernel-function call (`kernel::rdonly_cast`).
#![feature(asm_experimental_arch)]

mod common;
mod file;
mod io_uring;
mod kernel;
mod net;
mod noop;
mod path;
mod process;
mod sys_exit;
mod syscall;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: eBPF programs cannot panic; the verifier rejects any path that reaches here, so
    // this is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
