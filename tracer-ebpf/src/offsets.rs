//! The `OFFSETS` global: where the members the programs read lie in this kernel's structs.

use tracer_common::KernelOffsets;

/// Patched by userspace before load (`EbpfLoader::override_global`) from the kernel's BTF.
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: KernelOffsets = KernelOffsets {
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
    cgroup_kn: 0,
    kernfs_node_id: 0,
};

/// One member offset. The volatile read keeps the compiler from folding the zeroed default.
macro_rules! offset {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::offsets::OFFSETS.$field) as usize }
    };
}

pub(crate) use offset;
