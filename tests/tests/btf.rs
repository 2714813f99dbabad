//! Offsets and settings read from this machine's own kernel BTF (`/sys/kernel/btf/vmlinux`).

use std::path::Path;

use reapwatch::{
    cgroup::HierarchyKind,
    kernel::{btf::KernelBtf, preflight},
};
use tracer_common::{CGROUP_UNIFIED, CGROUP_V1_PIDS, HELPER_CURRENT_TASK_BTF};

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

fn kernel_btf() -> KernelBtf {
    KernelBtf::from_file(Path::new(VMLINUX)).expect("this machine has BTF")
}

/// The offsets must agree with the running kernel's own view of its structs, which
/// `/proc/kallsyms`-free means BTF; here we check self-consistency and known facts.
#[test]
fn offsets_of_the_running_kernel() {
    let btf = kernel_btf();
    let offsets = btf.kernel_offsets(HierarchyKind::V1Pids).unwrap();
    let settings = btf.program_settings(10_000_000, HierarchyKind::V1Pids);
    assert_eq!(settings.ready, 1);
    // `thread_info` (or the `__state` that follows it) opens task_struct on x86_64 with
    // THREAD_INFO_IN_TASK; every member we read lies inside the struct.
    let fields = [
        offsets.task_exit_code,
        offsets.task_exit_signal,
        offsets.task_pid,
        offsets.task_tgid,
        offsets.task_real_parent,
        offsets.task_group_leader,
        offsets.task_signal,
        offsets.task_comm,
        offsets.task_start_boottime,
        offsets.task_cgroups,
    ];
    assert!(fields.iter().all(|&f| f > 0 && f < 16384), "{offsets:?}");
    // tgid immediately follows pid (both pid_t) in every kernel since 2.6.
    assert_eq!(offsets.task_tgid, offsets.task_pid + 4);
    // exit_code and exit_signal are consecutive ints.
    assert_eq!(offsets.task_exit_signal, offsets.task_exit_code + 4);
    // live is the second atomic of signal_struct after sigcnt.
    assert_eq!(offsets.signal_live, 4);
    // The pids css pointer lies inside css_set's leading subsys[] array.
    assert!(offsets.css_set_pids_css < offsets.css_set_dfl_cgrp);
    assert_eq!(settings.cgroup_hierarchy, CGROUP_V1_PIDS);
    // bpf_get_current_task_btf arrived in 5.11.
    let release = preflight::kernel_release().unwrap();
    let has_task_btf = preflight::parse_release(&release).is_some_and(|version| version >= (5, 11));
    assert_eq!(
        settings.helpers,
        if has_task_btf {
            HELPER_CURRENT_TASK_BTF
        } else {
            0
        },
        "{release}"
    );
    let unified = btf.program_settings(10_000_000, HierarchyKind::Unified);
    assert_eq!(unified.cgroup_hierarchy, CGROUP_UNIFIED);
    btf.kernel_offsets(HierarchyKind::Unified).unwrap();
}

#[test]
fn missing_struct_or_member_is_an_error() {
    let btf = kernel_btf();
    assert!(btf.member_offset("task_struct", "no_such_member").is_err());
    assert!(btf.member_offset("no_such_struct_xyz", "pid").is_err());
}

#[test]
fn enum_values() {
    let btf = kernel_btf();
    let pids = btf.enum_value("cgroup_subsys_id", "pids_cgrp_id").unwrap();
    let count = btf
        .enum_value("cgroup_subsys_id", "CGROUP_SUBSYS_COUNT")
        .unwrap();
    assert!(pids < count);
    assert!(btf
        .enum_value("cgroup_subsys_id", "no_such_cgrp_id")
        .is_err());
}
