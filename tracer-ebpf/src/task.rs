//! Reads of kernel struct members at offsets that userspace resolved from BTF.

use core::mem::MaybeUninit;

use aya_ebpf::helpers::{bpf_get_current_task, bpf_ktime_get_ns, generated::bpf_probe_read_kernel};
use tracer_common::{KernelOffsets, Loss, CGROUP_V1_PIDS, SA_NOCLDWAIT, SIG_IGN};

use crate::maps::count_loss;

/// Patched by userspace before load (`EbpfLoader::override_global`); all zero means "not
/// configured", and every hook then returns at once.
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    ready: 0,
    task_exit_code: 0,
    task_exit_signal: 0,
    task_pid: 0,
    task_tgid: 0,
    task_real_parent: 0,
    task_group_leader: 0,
    task_signal: 0,
    task_comm: 0,
    task_start_boottime: 0,
    task_cgroups: 0,
    task_ptrace: 0,
    task_sighand: 0,
    sighand_sigchld_handler: 0,
    sighand_sigchld_flags: 0,
    signal_live: 0,
    css_set_dfl_cgrp: 0,
    css_set_pids_css: 0,
    css_cgroup: 0,
    cgroup_hierarchy: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    nsec_per_tick: 0,
};

/// One member offset. The volatile read keeps the compiler from folding the zeroed default.
macro_rules! offset {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const OFFSETS.$field) as usize }
    };
}

pub fn configured() -> bool {
    offset!(ready) != 0
}

pub fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// Reads a `T` at `base + offset`; a failed read is counted, never silent.
///
/// The value is loaded from the stack on both outcomes (the helper zeroes it on failure).
/// Loaded only on success, the compiler keeps it in a register that the failure path never
/// writes; the 6.1 verifier cannot tell that later uses only follow success and rejects the
/// program ("R8 !read_ok"; 6.12 and 6.18 accept it).
#[inline(always)]
fn read<T>(base: *const u8, offset: usize) -> Option<T> {
    if base.is_null() {
        return None;
    }
    let mut value = MaybeUninit::<T>::uninit();
    let ret = unsafe {
        bpf_probe_read_kernel(
            value.as_mut_ptr().cast(),
            size_of::<T>() as u32,
            base.wrapping_add(offset).cast(),
        )
    };
    // SAFETY: the helper wrote all size_of::<T>() bytes (the data, or zeroes on failure).
    let value = unsafe { core::ptr::read_volatile(value.as_ptr()) };
    if ret == 0 {
        Some(value)
    } else {
        count_loss(Loss::KernelRead);
        None
    }
}

/// A `struct task_struct *`.
#[derive(Clone, Copy)]
pub struct Task(*const u8);

impl Task {
    pub fn from_ptr(ptr: *const u8) -> Self {
        Self(ptr)
    }

    /// The task's thread id.
    pub fn pid(self) -> Option<u32> {
        read(self.0, offset!(task_pid))
    }

    pub fn tgid(self) -> Option<u32> {
        read(self.0, offset!(task_tgid))
    }

    pub fn exit_code(self) -> Option<i32> {
        read(self.0, offset!(task_exit_code))
    }

    pub fn exit_signal(self) -> Option<i32> {
        read(self.0, offset!(task_exit_signal))
    }

    pub fn comm(self) -> Option<[u8; 16]> {
        read(self.0, offset!(task_comm))
    }

    pub fn group_leader(self) -> Option<Task> {
        read::<*const u8>(self.0, offset!(task_group_leader)).map(Task)
    }

    pub fn real_parent(self) -> Option<Task> {
        read::<*const u8>(self.0, offset!(task_real_parent)).map(Task)
    }

    /// Start time in `USER_HZ` ticks since boot, as `/proc/<pid>/stat` field 22 shows it.
    pub fn start_ticks(self) -> Option<u64> {
        let boottime_ns: u64 = read(self.0, offset!(task_start_boottime))?;
        let per_tick = offset!(nsec_per_tick) as u64;
        if per_tick == 0 {
            return None;
        }
        Some(boottime_ns / per_tick)
    }

    pub fn is_ptraced(self) -> Option<bool> {
        Some(read::<u32>(self.0, offset!(task_ptrace))? != 0)
    }

    /// Whether an exit notification to this process reaps the child at once: the rule of
    /// `do_notify_parent()` (SIGCHLD ignored, or `SA_NOCLDWAIT`).
    pub fn autoreaps_children(self) -> Option<bool> {
        let sighand: *const u8 = read(self.0, offset!(task_sighand))?;
        let handler: u64 = read(sighand, offset!(sighand_sigchld_handler))?;
        let flags: u64 = read(sighand, offset!(sighand_sigchld_flags))?;
        Some(handler == SIG_IGN || flags & SA_NOCLDWAIT != 0)
    }

    fn signal(self) -> Option<*const u8> {
        read(self.0, offset!(task_signal))
    }

    /// Threads of the group that have not yet started `do_exit()`.
    pub fn live_threads(self) -> Option<i32> {
        read(self.signal()?, offset!(signal_live))
    }

    /// Id (kernfs inode number) of the task's cgroup in the hierarchy userspace chose.
    pub fn cgroup_id(self) -> Option<u64> {
        let css_set: *const u8 = read(self.0, offset!(task_cgroups))?;
        let cgroup: *const u8 = if offset!(cgroup_hierarchy) as u32 == CGROUP_V1_PIDS {
            let css: *const u8 = read(css_set, offset!(css_set_pids_css))?;
            read(css, offset!(css_cgroup))?
        } else {
            read(css_set, offset!(css_set_dfl_cgrp))?
        };
        let kernfs_node: *const u8 = read(cgroup, offset!(cgroup_kn))?;
        read(kernfs_node, offset!(kernfs_node_id))
    }

    pub fn current() -> Task {
        Task(unsafe { bpf_get_current_task() } as *const u8)
    }

    /// `(tgid, start ticks)` of this task's thread group.
    pub fn process_key(self) -> Option<tracer_common::ProcessKey> {
        let leader = self.group_leader()?;
        Some(tracer_common::ProcessKey::new(
            leader.tgid()?,
            leader.start_ticks()?,
        ))
    }
}
