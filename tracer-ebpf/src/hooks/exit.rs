//! `sched_process_exit(task[, group_dead])`: processes whose last thread exits, and the
//! zombies they leave (see `zombie`). `group_dead` is an argument only from 6.16 on; the
//! live-thread count it is computed from works on every kernel.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use tracer_common::EventKind;

use crate::{events::report, maps::update_cgroup, settings::configured, task::Task, zombie};

/// Kernels with BPF compare-and-swap (5.12+): the zombie slot table first.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    on_exit::<true>(ctx)
}

/// Kernels without: 5.10 refuses a program that holds an atomic exchange anywhere, even on a
/// path it would never take, so this one has none (the hash map alone).
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit_hash(ctx: BtfTracePointContext) -> i32 {
    on_exit::<false>(ctx)
}

#[inline(always)]
fn on_exit<const SLOTS: bool>(ctx: BtfTracePointContext) -> i32 {
    if !configured() {
        return 0;
    }
    let task = Task::from_arg(ctx.arg(0));
    if task.live_threads() != Some(0) {
        return 0;
    }
    let cgroup = task.cgroup();
    let cgroup_id = cgroup.map(|c| c.id);
    if let Some(cgroup_id) = cgroup_id {
        report(
            EventKind::Exit,
            task,
            task.exit_code().unwrap_or(0),
            0,
            || Some(cgroup_id),
        );
    }
    let zombie_parent_cgroup_id = zombie::record_if_left::<SLOTS>(task, cgroup);
    // Parent and child usually share a cgroup: one counter update then serves both.
    match (cgroup_id, zombie_parent_cgroup_id) {
        (Some(exited), Some(parent)) if exited == parent => update_cgroup(exited, |c| {
            c.exits += 1;
            c.zombies_created += 1;
        }),
        (exited, parent) => {
            if let Some(exited) = exited {
                update_cgroup(exited, |c| c.exits += 1);
            }
            if let Some(parent) = parent {
                update_cgroup(parent, |c| c.zombies_created += 1);
            }
        }
    }
    0
}
