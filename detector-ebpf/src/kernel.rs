//! Reading kernel memory with plain loads: pointers the verifier knows by their BTF type.
//!
//! A load through a typed pointer is checked by the verifier against the kernel's structure
//! layout and compiled to a fault-safe load: about a nanosecond, where a `bpf_probe_read_kernel`
//! call costs tens. Pointers start typed from the current task; an address that is not (a
//! descriptor slot, a `struct mount` around its `vfsmount`) becomes typed through the kernel
//! function `bpf_rdonly_cast`, which the verifier replaces by a plain move.

use aya_ebpf::{
    helpers::generated::{bpf_get_current_task, bpf_get_current_task_btf},
    macros::map,
    maps::{Array, PerCpuArray},
};
use detector_common::{KFUNC_RDONLY_CAST_MARKER, KernelTypes, TaskCacheEntry};

use crate::common::offset;

/// BTF type ids of the structures the programs cast to, set by user space at load.
#[unsafe(no_mangle)]
static KERNEL_TYPES: KernelTypes = KernelTypes {
    file_slot: 0,
    mount: 0,
    vfsmount: 0,
    dentry: 0,
    task: 0,
};

/// This CPU's last task seen at syscall exit (see [`Task::at_syscall_exit`]).
#[map(name = "TASK_CACHE")]
static TASK_CACHE: PerCpuArray<TaskCacheEntry> = PerCpuArray::with_max_entries(1, 0);

/// Thread exits since load, every thread of every cgroup: counted by the exit program, which
/// user space attaches before `sys_exit` and detaches after it.
#[map(name = "TASK_EXITS")]
static TASK_EXITS: Array<u64> = Array::with_max_entries(1, 0);

/// Counts a thread exit: from here on, no cached entry filled before names a live task for sure.
#[inline(always)]
pub fn count_thread_exit() {
    if let Some(exits) = TASK_EXITS.get_ptr_mut(0) {
        // SAFETY: the array slot is valid, aligned map memory shared by all CPUs. An atomic
        // add (the BPF target has no `AtomicU64::fetch_add`).
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({exits} + 0) += {one}",
                exits = in(reg) exits,
                one = in(reg) 1u64,
            );
        }
    }
}

/// A pointer the verifier knows by its BTF type (possibly null).
#[derive(Clone, Copy)]
pub struct Btf(pub *const u8);

impl Btf {
    /// The address.
    #[inline(always)]
    pub fn addr(self) -> u64 {
        self.0 as u64
    }

    /// The pointer `off` bytes further into the same object (a member, or an embedded
    /// structure): still typed, the verifier tracks the offset.
    #[inline(always)]
    pub fn at(self, off: u32) -> Self {
        // SAFETY: only the address is computed; loads through it are checked by the verifier.
        Self(unsafe { self.0.add(off as usize) })
    }

    /// The pointer member at `off`: typed again when it points to a structure.
    #[inline(always)]
    pub fn ptr(self, off: u32) -> Self {
        // SAFETY: a typed load: the verifier checks the offset against the BTF layout of the
        // pointee and makes the load fault-safe (a bad address reads as zero).
        Self(unsafe { core::ptr::read(self.0.add(off as usize).cast::<*const u8>()) })
    }

    /// The 64-bit member at `off`.
    #[inline(always)]
    pub fn u64_at(self, off: u32) -> u64 {
        // SAFETY: as above.
        unsafe { core::ptr::read(self.0.add(off as usize).cast::<u64>()) }
    }

    /// The 32-bit member at `off`.
    #[inline(always)]
    pub fn u32_at(self, off: u32) -> u32 {
        // SAFETY: as above.
        unsafe { core::ptr::read(self.0.add(off as usize).cast::<u32>()) }
    }

    /// The 16-bit member at `off`.
    #[inline(always)]
    pub fn u16_at(self, off: u32) -> u16 {
        // SAFETY: as above.
        unsafe { core::ptr::read(self.0.add(off as usize).cast::<u16>()) }
    }
}

/// `bpf_rdonly_cast(addr, btf_id)`: `addr` as a read-only, untrusted pointer to the structure
/// with that BTF id. Rust has no syntax for a kernel-function call, so this emits a helper call
/// to [`KFUNC_RDONLY_CAST_MARKER`], which user space rewrites into the kfunc call (source
/// register `BPF_PSEUDO_KFUNC_CALL`, immediate the function's BTF id) before loading.
#[inline(always)]
fn rdonly_cast(addr: u64, btf_id: u32) -> Btf {
    let out: u64;
    // SAFETY: the call follows the BPF calling convention: arguments in r1 and r2, result in
    // r0, r1 to r5 clobbered. The kernel function only reinterprets its argument.
    unsafe {
        core::arch::asm!(
            "call {marker}",
            marker = const KFUNC_RDONLY_CAST_MARKER,
            inlateout("r1") addr => _,
            inlateout("r2") u64::from(btf_id) => _,
            lateout("r0") out,
            lateout("r3") _,
            lateout("r4") _,
            lateout("r5") _,
        );
    }
    Btf(out as *const u8)
}

/// The `struct file *` stored at `slot` (an entry of a descriptor table), typed: the slot is
/// cast to a structure whose first member is a `struct file *` (see `KernelTypes::file_slot`).
#[inline(always)]
pub fn file_at(slot: u64) -> Btf {
    // SAFETY: a global set at load time; volatile so the placeholder is not folded in.
    let id = unsafe { core::ptr::read_volatile(&KERNEL_TYPES.file_slot) };
    rdonly_cast(slot, id).ptr(0)
}

/// The `struct mount` at `addr`, typed.
#[inline(always)]
pub fn mount_at(addr: u64) -> Btf {
    // SAFETY: as above.
    rdonly_cast(addr, unsafe {
        core::ptr::read_volatile(&KERNEL_TYPES.mount)
    })
}

/// The `struct vfsmount` at `addr`, typed.
#[inline(always)]
pub fn vfsmount_at(addr: u64) -> Btf {
    // SAFETY: as above.
    rdonly_cast(addr, unsafe {
        core::ptr::read_volatile(&KERNEL_TYPES.vfsmount)
    })
}

/// The `struct dentry` at `addr`, typed.
#[inline(always)]
pub fn dentry_at(addr: u64) -> Btf {
    // SAFETY: as above.
    rdonly_cast(addr, unsafe {
        core::ptr::read_volatile(&KERNEL_TYPES.dentry)
    })
}

/// The current task, typed.
#[derive(Clone, Copy)]
pub struct Task(pub Btf);

impl Task {
    /// The current task at syscall exit, `regs` being the tracepoint's `struct pt_regs *` (the
    /// syscall's registers, at the top of the current task's kernel stack), without a helper
    /// call when this CPU saw the same task last: tasks run syscalls back to back, and with
    /// return-thunk mitigations a helper's call and return cost about a third of a read-only
    /// open's whole check.
    ///
    /// The entry is trusted when its `regs` is this syscall's and no thread exited since it was
    /// filled. Two live tasks never share a kernel stack, so the same `regs` means the same
    /// task; a stack is only reused after its task exited, and every exit is counted before
    /// that (the exit program runs in `do_exit`, long before the stack is freed). The task is
    /// read-only (`bpf_rdonly_cast`) either way, so that both ways verify as one.
    #[inline(always)]
    pub fn at_syscall_exit(regs: u64) -> Self {
        let exits = match TASK_EXITS.get_ptr(0) {
            // SAFETY: valid map memory; a plain read of a counter others add to.
            Some(exits) => unsafe { core::ptr::read_volatile(exits) },
            None => u64::MAX,
        };
        let task = match TASK_CACHE.get_ptr_mut(0) {
            Some(entry) => {
                // SAFETY: this CPU's slot; one run of a program at a time uses it on a CPU.
                let entry = unsafe { &mut *entry };
                // SAFETY: volatile accesses to the slot, so the compiler keeps their order.
                unsafe {
                    if core::ptr::read_volatile(&entry.regs) == regs
                        && core::ptr::read_volatile(&entry.exits) == exits
                    {
                        core::ptr::read_volatile(&entry.task)
                    } else {
                        let task = bpf_get_current_task();
                        // Emptied first: a half-written entry never matches.
                        core::ptr::write_volatile(&mut entry.regs, 0);
                        core::ptr::write_volatile(&mut entry.task, task);
                        core::ptr::write_volatile(&mut entry.exits, exits);
                        core::ptr::write_volatile(&mut entry.regs, regs);
                        task
                    }
                }
            }
            // SAFETY: a helper without arguments.
            None => unsafe { bpf_get_current_task() },
        };
        // SAFETY: a global set at load time.
        Self(rdonly_cast(task, unsafe {
            core::ptr::read_volatile(&KERNEL_TYPES.task)
        }))
    }

    /// `current`, from the helper.
    #[inline(always)]
    pub fn current() -> Self {
        // SAFETY: a helper without arguments; it returns the task as a typed pointer.
        Self(Btf(unsafe { bpf_get_current_task_btf() } as *const u8))
    }

    /// The thread-group id.
    #[inline(always)]
    pub fn tgid(self) -> u32 {
        self.0.u32_at(offset!(task_tgid))
    }

    /// The cgroup2 id, as `bpf_get_current_cgroup_id` gives it (`cgroups->dfl_cgrp->kn->id`),
    /// with typed loads instead of a helper call.
    #[inline(always)]
    pub fn cgroup_id(self) -> u64 {
        self.0
            .ptr(offset!(task_cgroups))
            .ptr(offset!(css_set_dfl_cgrp))
            .ptr(offset!(cgroup_kn))
            .u64_at(offset!(kernfs_node_id))
    }
}
