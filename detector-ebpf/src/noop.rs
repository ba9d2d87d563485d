//! Do-nothing programs on the tracepoints the sensors use: the cost floor the benchmark compares
//! the sensors against. The daemon never attaches them.

use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

#[btf_tracepoint(function = "sys_exit")]
pub fn noop_sys_exit(_ctx: BtfTracePointContext) -> i32 {
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
