//! Reading kernel memory: plain loads through pointers the verifier knows by their BTF type,
//! or, in the `probe-read` build, a `bpf_probe_read_kernel` call per load.
//!
//! A load through a typed pointer is checked by the verifier against the kernel's structure
//! layout and compiled to a fault-safe load: about a nanosecond, where a `bpf_probe_read_kernel`
//! call costs tens. Pointers start typed from the current task; an address that is not (a
//! descriptor slot, a `struct mount` around its `vfsmount`) becomes typed through the kernel
//! function `bpf_rdonly_cast`, which the verifier replaces by a plain move.
//!
//! `bpf_rdonly_cast` came with Linux 6.2 and `bpf_get_current_task_btf` with 5.11, so the
//! crate is built twice: the typed build, and the `probe-read` feature's, where [`Btf`] is
//! a plain address read through the helper (5.5 and later) and a cast changes nothing. The
//! programs are the same source either way; user space loads the build the kernel can run.

#[cfg(not(feature = "probe-read"))]
use aya_ebpf::helpers::generated::bpf_get_current_task_btf;
use aya_ebpf::{helpers::generated::bpf_get_current_task, macros::map, maps::PerCpuArray};
#[cfg(not(feature = "probe-read"))]
use detector_common::KFUNC_RDONLY_CAST_MARKER;
use detector_common::{KernelTypes, TaskCacheEntry};

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
/// user space attaches before `sys_exit` and detaches after it. A global (`.bss`), not an
/// array map: its address is a constant of the program, with no key and bound to check on
/// every read-only open.
#[unsafe(no_mangle)]
static mut TASK_EXITS: u64 = 0;

/// Counts a thread exit: from here on, no cached entry filled before names a live task for sure.
#[inline(always)]
pub fn count_thread_exit() {
    // SAFETY: the global is valid, aligned map memory shared by all CPUs. An atomic add (the
    // BPF target has no `AtomicU64::fetch_add`).
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({exits} + 0) += {one}",
            exits = in(reg) core::ptr::addr_of_mut!(TASK_EXITS),
            one = in(reg) 1u64,
        );
    }
}

/// A pointer the verifier knows by its BTF type (possibly null); in the `probe-read` build,
/// an address read through `bpf_probe_read_kernel`.
#[derive(Clone, Copy)]
pub struct Btf(pub *const u8);

/// The `T` at `addr`: a typed load, checked by the verifier and fault-safe (a bad address reads
/// as zero).
#[cfg(not(feature = "probe-read"))]
#[inline(always)]
fn load<T: Copy>(addr: *const u8) -> T {
    // SAFETY: a typed load (see above); the verifier rejects any it cannot prove safe.
    unsafe { core::ptr::read(addr.cast::<T>()) }
}

/// The `T` at `addr`, read by `bpf_probe_read_kernel`; zero when the read faults, as a typed
/// load reads.
///
/// The helper's result is not looked at: it zeroes the destination when the read faults, and
/// a branch on the result would double the paths the verifier walks at every load (measured:
/// the path-operation programs went past its 1M-instruction limit with one).
#[cfg(feature = "probe-read")]
#[inline(always)]
fn load<T: Copy>(addr: *const u8) -> T {
    let mut value = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper writes `size_of::<T>()` bytes to `value` whatever happens: the
    // kernel's memory at `addr`, or zeroes when that faults; every `T` read here (integers,
    // pointers) may be all zeroes.
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            value.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            addr.cast(),
        );
        value.assume_init()
    }
}

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
        Self(load(self.at(off).0))
    }

    /// The 64-bit member at `off`.
    #[inline(always)]
    pub fn u64_at(self, off: u32) -> u64 {
        load(self.at(off).0)
    }

    /// The 32-bit member at `off`.
    #[inline(always)]
    pub fn u32_at(self, off: u32) -> u32 {
        load(self.at(off).0)
    }

    /// The 16-bit member at `off`.
    #[inline(always)]
    pub fn u16_at(self, off: u32) -> u16 {
        load(self.at(off).0)
    }
}

/// `bpf_rdonly_cast(addr, btf_id)`: `addr` as a read-only, untrusted pointer to the structure
/// with that BTF id. Rust has no syntax for a kernel-function call, so this emits a helper call
/// to [`KFUNC_RDONLY_CAST_MARKER`], which user space rewrites into the kfunc call (source
/// register `BPF_PSEUDO_KFUNC_CALL`, immediate the function's BTF id) before loading.
#[cfg(not(feature = "probe-read"))]
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

/// The `probe-read` build's cast: the address itself, every load through it being a probe read.
#[cfg(feature = "probe-read")]
#[inline(always)]
fn rdonly_cast(addr: u64, _btf_id: u32) -> Btf {
    Btf(addr as *const u8)
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
        // SAFETY: valid map memory; a plain read of a counter others add to.
        let exits = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(TASK_EXITS)) };
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
    #[cfg(not(feature = "probe-read"))]
    #[inline(always)]
    pub fn current() -> Self {
        // SAFETY: a helper without arguments; it returns the task as a typed pointer.
        Self(Btf(unsafe { bpf_get_current_task_btf() } as *const u8))
    }

    /// `current`, from the helper that returns its address (`bpf_get_current_task_btf` is
    /// 5.11's).
    #[cfg(feature = "probe-read")]
    #[inline(always)]
    pub fn current() -> Self {
        // SAFETY: a helper without arguments.
        Self(Btf(unsafe { bpf_get_current_task() } as *const u8))
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
