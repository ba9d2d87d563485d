//! The detector's kernel programs.
//!
//! - `file`: `tp_btf/sys_enter`, file opens with write intent, opens of read-sensitive
//!   paths, unlink/rename/chmod of sensitive paths.
//! - `process`: `raw_tracepoint/sched_process_exec` and `sched_process_exit`.
//! - `net`: `cgroup/connect4`, `cgroup/connect6` (outbound connects) and `cgroup_skb/egress`
//!   (bytes and packets per cgroup, counted in the kernel).
//! - `noop`: do-nothing programs on the same tracepoints, the floor for benchmarks.
//!
//! Programs are thin: each filters before copying anything, reserves or outputs its record
//! straight into the ring buffer, and counts every record it could not deliver in `STATS`.
#![no_std]
#![no_main]

mod common;
mod file;
mod net;
mod noop;
mod process;

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
