//! Reads of kernel struct members at offsets that userspace resolved from BTF.
//!
//! Most pointers the hooks follow are typed: a `tp_btf` argument is a `struct task_struct *`
//! the verifier knows from the kernel's BTF, and so is every pointer loaded from one. Members
//! of those are read with plain loads ([`Typed`]): the offsets come from a frozen read-only
//! global, which the verifier treats as constants, checks against the kernel's BTF, and turns
//! each load into a fault-safe one. That costs a few ns where a `bpf_probe_read_kernel` call
//! costs about 50 here; the helper ([`Probed`]) remains for the untyped current task of
//! `sched_process_wait` and for `comm`, a byte array.

use core::{marker::PhantomData, mem::MaybeUninit};

use aya_ebpf::helpers::{
    bpf_get_current_task, bpf_get_current_task_btf, generated::bpf_probe_read_kernel,
};
use tracer_common::{Loss, ProcessKey, HELPER_CURRENT_TASK_BTF, SA_NOCLDWAIT, SIG_IGN};

use crate::{
    diagnostics,
    losses::count_loss,
    offsets::offset,
    settings::{cgroups_from_v1_pids, has_helper, ns_per_user_hz_tick},
};

/// How a `T` is read at a kernel address.
pub trait Access: Copy {
    fn load<T>(address: *const u8) -> T;
}

/// A plain load through a BTF-typed pointer; a fault reads as zero.
#[derive(Clone, Copy)]
pub struct Typed;

impl Access for Typed {
    #[inline(always)]
    fn load<T>(address: *const u8) -> T {
        // Volatile: one load per member, never merged across members (the verifier checks
        // each load against a single member).
        unsafe { core::ptr::read_volatile(address.cast()) }
    }
}

/// `bpf_probe_read_kernel`, for untyped pointers; a fault reads as zero and is counted.
#[derive(Clone, Copy)]
pub struct Probed;

impl Access for Probed {
    /// The value is loaded from the stack on both outcomes (the helper zeroes it on failure).
    /// Loaded only on success, the compiler keeps it in a register that the failure path never
    /// writes; the 6.1 verifier cannot tell that later uses only follow success and rejects the
    /// program ("R8 !read_ok"; 6.12 and 6.18 accept it).
    #[inline(always)]
    fn load<T>(address: *const u8) -> T {
        let mut value = MaybeUninit::<T>::uninit();
        let ret = unsafe {
            bpf_probe_read_kernel(
                value.as_mut_ptr().cast(),
                size_of::<T>() as u32,
                address.cast(),
            )
        };
        if ret != 0 {
            count_loss(Loss::KernelRead);
            diagnostics::kernel_read_failed(ret);
        }
        // SAFETY: the helper wrote all size_of::<T>() bytes (the data, or zeroes on failure).
        unsafe { core::ptr::read_volatile(value.as_ptr()) }
    }
}

/// Reads a `T` at `base + offset`; `None` for a null `base`.
#[inline(always)]
fn read<A: Access, T>(base: *const u8, offset: usize) -> Option<T> {
    if base.is_null() {
        return None;
    }
    Some(A::load(base.wrapping_add(offset)))
}

/// Reads a pointer at `base + offset`; a null one is `None`, and counted: every pointer read
/// here is set for as long as the hooks look at it.
#[inline(always)]
fn read_pointer<A: Access>(base: *const u8, offset: usize) -> Option<*const u8> {
    let pointer: *const u8 = read::<A, _>(base, offset)?;
    if pointer.is_null() {
        count_loss(Loss::KernelRead);
        diagnostics::null_kernel_pointer(offset);
        return None;
    }
    Some(pointer)
}

/// A `struct task_struct *`, read the way `A` says.
#[derive(Clone, Copy)]
pub struct Task<A: Access = Typed>(*const u8, PhantomData<A>);

impl Task<Typed> {
    /// A task pointer from a `tp_btf` argument.
    pub fn from_arg(ptr: *const u8) -> Self {
        Self(ptr, PhantomData)
    }
}

impl Task<Typed> {
    /// The current task, typed; only where the kernel has `bpf_get_current_task_btf`.
    pub fn current_typed() -> Option<Self> {
        has_helper(HELPER_CURRENT_TASK_BTF).then(|| {
            Self(
                unsafe { bpf_get_current_task_btf() } as *const u8,
                PhantomData,
            )
        })
    }
}

impl Task<Probed> {
    pub fn current() -> Self {
        Self(unsafe { bpf_get_current_task() } as *const u8, PhantomData)
    }
}

impl<A: Access> Task<A> {
    fn read<T>(self, offset: usize) -> Option<T> {
        read::<A, T>(self.0, offset)
    }

    fn pointer(self, offset: usize) -> Option<*const u8> {
        read_pointer::<A>(self.0, offset)
    }

    /// The task's thread id.
    pub fn pid(self) -> Option<u32> {
        self.read(offset!(task_pid))
    }

    pub fn tgid(self) -> Option<u32> {
        self.read(offset!(task_tgid))
    }

    pub fn exit_code(self) -> Option<i32> {
        self.read(offset!(task_exit_code))
    }

    pub fn exit_signal(self) -> Option<i32> {
        self.read(offset!(task_exit_signal))
    }

    /// As two 8-byte loads: the verifier takes loads within an array of bytes.
    pub fn comm(self) -> Option<[u8; 16]> {
        let low: u64 = self.read(offset!(task_comm))?;
        let high: u64 = self.read(offset!(task_comm) + 8)?;
        let mut comm = [0; 16];
        comm[..8].copy_from_slice(&low.to_ne_bytes());
        comm[8..].copy_from_slice(&high.to_ne_bytes());
        Some(comm)
    }

    pub fn group_leader(self) -> Option<Self> {
        self.pointer(offset!(task_group_leader))
            .map(|ptr| Self(ptr, PhantomData))
    }

    pub fn real_parent(self) -> Option<Self> {
        self.pointer(offset!(task_real_parent))
            .map(|ptr| Self(ptr, PhantomData))
    }

    /// Start time in `USER_HZ` ticks since boot, as `/proc/<pid>/stat` field 22 shows it.
    pub fn start_ticks(self) -> Option<u64> {
        let boottime_ns: u64 = self.read(offset!(task_start_boottime))?;
        let per_tick = ns_per_user_hz_tick();
        if per_tick == 0 {
            return None;
        }
        Some(boottime_ns / per_tick)
    }

    pub fn is_ptraced(self) -> Option<bool> {
        Some(self.read::<u32>(offset!(task_ptrace))? != 0)
    }

    /// Whether an exit notification to this process reaps the child at once: the rule of
    /// `do_notify_parent()` (SIGCHLD ignored, or `SA_NOCLDWAIT`).
    pub fn autoreaps_children(self) -> Option<bool> {
        let sighand = self.pointer(offset!(task_sighand))?;
        let handler: u64 = read::<A, _>(sighand, offset!(sighand_sigchld_handler))?;
        let flags: u64 = read::<A, _>(sighand, offset!(sighand_sigchld_flags))?;
        Some(handler == SIG_IGN || flags & SA_NOCLDWAIT != 0)
    }

    /// Threads of the group that have not yet started `do_exit()`.
    pub fn live_threads(self) -> Option<i32> {
        let signal = self.pointer(offset!(task_signal))?;
        read::<A, _>(signal, offset!(signal_live))
    }

    /// The task's `css_set`: tasks with the same one are in the same cgroups.
    pub fn css_set(self) -> Option<*const u8> {
        self.pointer(offset!(task_cgroups))
    }

    /// Id (kernfs inode number) of the task's cgroup in the hierarchy userspace chose.
    pub fn cgroup_id(self) -> Option<u64> {
        cgroup_id_of::<A>(self.css_set()?)
    }

    /// The task's cgroup, with the `css_set` it was found by.
    pub fn cgroup(self) -> Option<Cgroup> {
        let css_set = self.css_set()?;
        Some(Cgroup {
            css_set,
            id: cgroup_id_of::<A>(css_set)?,
        })
    }

    /// The task's cgroup id, without walking to it when the task shares `known`'s `css_set`
    /// (a parent and its child, usually).
    pub fn cgroup_id_near(self, known: Option<Cgroup>) -> Option<u64> {
        let css_set = self.css_set()?;
        match known {
            Some(known) if known.css_set == css_set => Some(known.id),
            _ => cgroup_id_of::<A>(css_set),
        }
    }

    /// `(tgid, start ticks)` of this task's thread group.
    pub fn process_key(self) -> Option<ProcessKey> {
        let leader = self.group_leader()?;
        Some(ProcessKey::new(leader.tgid()?, leader.start_ticks()?))
    }
}

/// A cgroup id and a `css_set` whose tasks are in it.
#[derive(Clone, Copy)]
pub struct Cgroup {
    css_set: *const u8,
    pub id: u64,
}

/// Id of the cgroup a `css_set` puts its tasks in, in the hierarchy userspace chose.
pub fn cgroup_id_of<A: Access>(css_set: *const u8) -> Option<u64> {
    let cgroup = if cgroups_from_v1_pids() {
        let css = read_pointer::<A>(css_set, offset!(css_set_pids_css))?;
        read_pointer::<A>(css, offset!(css_cgroup))?
    } else {
        read_pointer::<A>(css_set, offset!(css_set_dfl_cgrp))?
    };
    let kernfs_node = read_pointer::<A>(cgroup, offset!(cgroup_kn))?;
    read::<A, _>(kernfs_node, offset!(kernfs_node_id))
}
