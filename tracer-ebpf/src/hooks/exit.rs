//! `sched_process_exit(task[, group_dead])`: processes whose last thread exits, and the
//! zombies they leave (see `zombie`), once per process. `group_dead` (6.16+) names the one
//! thread that took the group's live count to zero. Before, the hook sees only the count, and
//! every thread that gets there after the last decrement finds it zero (an `exit_group()` of a
//! process whose threads all run): the first of them claims the group (`EXITED_GROUPS`).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use tracer_common::EventKind;

use crate::{
    events::report,
    maps::{claim_group_exit, update_cgroup},
    settings::{configured, exit_has_group_dead},
    task::Task,
    zombie,
};

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
    if !ends_its_group::<SLOTS>(&ctx, task) {
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
            c.exit();
            c.zombie_created();
        }),
        (exited, parent) => {
            if let Some(exited) = exited {
                update_cgroup(exited, |c| c.exit());
            }
            if let Some(parent) = parent {
                update_cgroup(parent, |c| c.zombie_created());
            }
        }
    }
    0
}

/// Whether `task`'s exit ends its thread group; true for one thread per group.
#[inline(always)]
fn ends_its_group<const SLOTS: bool>(ctx: &BtfTracePointContext, task: Task) -> bool {
    // Kernels with `group_dead` all have the slot table: 5.10's program holds no read of it.
    if SLOTS && exit_has_group_dead() {
        return ctx.arg::<u64>(1) != 0;
    }
    task.live_threads() == Some(0) && task.process_key().is_some_and(|key| claim_group_exit(&key))
}
