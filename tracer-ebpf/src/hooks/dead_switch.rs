//! `sched_switch` of a dead task: the one moment a zombie is known to exist.
//!
//! A dying task's last switch comes after `exit_notify()` has decided its fate. Its group
//! leader is then a reapable zombie exactly when the leader's `exit_state` is `EXIT_ZOMBIE`
//! and no other thread of the group is left unreleased. That excludes autoreaped exits (already
//! `EXIT_DEAD` and released), thread exits, and a leader that exited while its threads live on
//! (a zombie in `/proc`, but its parent is not told until the last thread goes: that thread's
//! own dead switch then records it). Several threads can see the same moment; the first insert
//! wins.
//!
//! This runs on every context switch, so the first check must be cheap: from 5.18 the
//! tracepoint passes `prev_state` (4th argument); before, the loader attaches the variant that
//! reads `prev->__state` instead.

use aya_ebpf::{helpers::bpf_get_current_cgroup_id, macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{ProcessKey, Zombie, EXIT_ZOMBIE, TASK_DEAD};

use crate::{
    maps::{insert_zombie, update_cgroup},
    task::{configured, now_ns, Task},
};

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let prev_state: u64 = ctx.arg(3);
    if prev_state as u32 & TASK_DEAD != 0 && configured() {
        on_task_dead(Task::from_ptr(ctx.arg(1)));
    }
    0
}

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_before_5_18(ctx: BtfTracePointContext) -> i32 {
    if !configured() {
        return 0;
    }
    let prev = Task::from_ptr(ctx.arg(1));
    if prev.state().is_some_and(|state| state & TASK_DEAD != 0) {
        on_task_dead(prev);
    }
    0
}

#[inline(always)]
fn on_task_dead(prev: Task) {
    let Some(leader) = prev.group_leader() else {
        return;
    };
    if leader.exit_state() != Some(EXIT_ZOMBIE) || leader.unreleased_threads() != Some(1) {
        return;
    }
    let (Some(tgid), Some(start_ticks)) = (leader.tgid(), leader.start_ticks()) else {
        return;
    };
    let Some(parent) = leader.real_parent() else {
        return;
    };
    let Some(parent_key) = parent.process_key() else {
        return;
    };
    let parent_cgroup_id = parent.cgroup_id().unwrap_or(0);
    let zombie = Zombie {
        parent: parent_key,
        exit_ns: now_ns(),
        // `current` is the dying task, still in its cgroup.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        parent_cgroup_id,
        exit_status: leader.exit_code().unwrap_or(0),
        exit_signal: leader.exit_signal().unwrap_or(0),
        flags: 0,
        comm: leader.comm().unwrap_or([0; 16]),
        _pad: 0,
    };
    if insert_zombie(&ProcessKey::new(tgid, start_ticks), &zombie) {
        update_cgroup(parent_cgroup_id, |c| c.zombies_created += 1);
    }
}
