//! Do-nothing programs on the tracepoints the sensors use: the cost floor the benchmark compares
//! the sensors against. The daemon never attaches them.

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn noop_sys_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn noop_sched_process_exec(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn noop_sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    0
}
