//! The `OFFSETS` global: where the members the programs read lie in this kernel's structs,
//! and how userspace configured the programs.

use tracer_common::KernelOffsets;

/// Patched by userspace before load (`EbpfLoader::override_global`); all zero means "not
/// configured", and every hook then returns at once.
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: KernelOffsets = KernelOffsets {
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
    zombie_slots: 0,
    helpers: 0,
};

/// One member offset. The volatile read keeps the compiler from folding the zeroed default.
macro_rules! offset {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::offsets::OFFSETS.$field) as usize }
    };
}

pub(crate) use offset;

pub fn configured() -> bool {
    offset!(ready) != 0
}

/// Entries of the zombie slot table; 0 when the kernel cannot use it.
pub fn zombie_slots() -> u32 {
    offset!(zombie_slots) as u32
}

pub fn has_helper(bit: u32) -> bool {
    offset!(helpers) as u32 & bit != 0
}
