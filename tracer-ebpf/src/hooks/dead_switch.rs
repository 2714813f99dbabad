//! `sched_switch` of a dead task: where zombies are recognised.
//!
//! A dying task's last switch comes after `exit_notify()` has decided its fate, and always
//! before its `sched_process_free` (the final switch drops one of the two `rcu_users`
//! references that free waits for). At that switch the group leader is:
//! - `EXIT_ZOMBIE` with no other thread unreleased: a reapable zombie. Several threads may
//!   see it; the first insert wins. A leader that exited while threads live on is a zombie in
//!   `/proc` but its parent is not told until the last thread goes, so it does not count yet.
//! - `EXIT_DEAD`, seen by the leader itself: released already, either autoreaped by the
//!   kernel or reaped by a parent quick enough to win the race against this switch (it
//!   happens: a parent blocked in `waitpid()` on the other CPU). The rule of
//!   `do_notify_parent()` tells them apart; a reaped one is still a zombie that existed, and
//!   its free right after closes the record.
//!
//! Thread exits (never zombies) and a leader released by `de_thread()` (exec from another
//! thread: its exit signal is -1) are neither.
//!
//! This runs on every context switch, so the first check is a compare: from 5.18 the
//! tracepoint passes `prev_state`; before, the loader attaches the variant reading
//! `prev->__state`.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{EventKind, ProcessKey, Zombie, EXIT_DEAD, EXIT_ZOMBIE, SIGCHLD, TASK_DEAD};

use crate::{
    events::report,
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
    let left_a_zombie = match leader.exit_state() {
        // 0: the parent released it between the two reads.
        Some(EXIT_ZOMBIE) => leader.unreleased_threads().is_some_and(|n| n <= 1),
        Some(EXIT_DEAD) => was_reaped_before_switch(prev, leader).unwrap_or(false),
        _ => false,
    };
    if left_a_zombie {
        record_zombie(leader);
    }
}

/// `EXIT_DEAD` at the leader's own final switch: a zombie its parent already reaped, unless
/// the exit was never going to leave one.
#[inline(always)]
fn was_reaped_before_switch(prev: Task, leader: Task) -> Option<bool> {
    if !leader.is_leader()? || prev.pid()? != leader.pid()? {
        return Some(false);
    }
    let exit_signal = leader.exit_signal()?;
    if exit_signal == -1 {
        return Some(false);
    }
    if leader.is_ptraced()? || exit_signal != SIGCHLD {
        return Some(true);
    }
    Some(!leader.real_parent()?.autoreaps_children()?)
}

#[inline(always)]
fn record_zombie(leader: Task) {
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
        cgroup_id: leader.cgroup_id().unwrap_or(0),
        parent_cgroup_id,
        exit_status: leader.exit_code().unwrap_or(0),
        exit_signal: leader.exit_signal().unwrap_or(0),
        flags: 0,
        comm: leader.comm().unwrap_or([0; 16]),
        _pad: 0,
    };
    if insert_zombie(&ProcessKey::new(tgid, start_ticks), &zombie) {
        update_cgroup(parent_cgroup_id, |c| c.zombies_created += 1);
        report(
            EventKind::Zombie,
            leader,
            zombie.exit_status,
            0,
            zombie.cgroup_id,
        );
    }
}
