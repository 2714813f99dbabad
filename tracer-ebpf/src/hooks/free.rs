//! `sched_process_free(task)`: the task was released (reaped, autoreaped, or replaced by an
//! exec from another thread) at least one RCU grace period ago. It runs in RCU callback
//! context, so only the argument identifies the task, never `current`.
//!
//! It is the fast path, not the only one: with tracing programs attached to the sched
//! tracepoints, some tasks' free never fires (seen on 6.18, with bpftrace alone too).
//! Userspace then closes the record once `/proc` shows the process released; whichever side
//! deletes the record counts the reap, so each is counted once.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{EventKind, ProcessKey, ZOMBIE_EXIT_STATUS_UNKNOWN, ZOMBIE_SEEN_LATE};

use crate::{
    clock::coarse_now_ns,
    diagnostics,
    events::report,
    maps::{record_lifetime, take_zombie, update_cgroup},
    settings::{configured, ns_per_user_hz_tick},
    task::Task,
};

/// Kernels with BPF compare-and-swap (5.12+): the zombie slot table first.
#[btf_tracepoint(function = "sched_process_free")]
pub fn sched_process_free(ctx: BtfTracePointContext) -> i32 {
    on_free::<true>(ctx)
}

/// Kernels without: the hash map alone (see `exit`).
#[btf_tracepoint(function = "sched_process_free")]
pub fn sched_process_free_hash(ctx: BtfTracePointContext) -> i32 {
    on_free::<false>(ctx)
}

#[inline(always)]
fn on_free<const SLOTS: bool>(ctx: BtfTracePointContext) -> i32 {
    if !configured() {
        return 0;
    }
    let task = Task::from_arg(ctx.arg(0));
    let (Some(pid), Some(tgid)) = (task.pid(), task.tgid()) else {
        return 0;
    };
    // Zombies are group leaders; a thread's release says nothing about one.
    if pid != tgid {
        return 0;
    }
    let Some(start_ticks) = task.start_ticks() else {
        return 0;
    };
    if let Some(zombie) = take_zombie::<SLOTS>(&ProcessKey::new(tgid, start_ticks)) {
        let now = coarse_now_ns();
        let lifetime = now.saturating_sub(zombie.exit_ns);
        // Charged where it was created, even if it was reparented since; a zombie found in
        // /proc was counted created by userspace when found. Only a seen exit has a lifetime.
        update_cgroup(zombie.parent_cgroup_id, |c| c.zombie_reaped());
        if zombie.flags & ZOMBIE_SEEN_LATE == 0 {
            // Both times lag by at most a kernel tick, which is shorter than a USER_HZ one:
            // an exit later than that is a record the programs cannot explain.
            if zombie.exit_ns > now + ns_per_user_hz_tick() {
                diagnostics::freed_before_exit(tgid, zombie.exit_ns - now);
            }
            record_lifetime(lifetime);
        }
        // Userspace could not read the status of a zombie it found (the kernel hides it from
        // readers that may not ptrace); here the task is at hand.
        let status = if zombie.flags & ZOMBIE_EXIT_STATUS_UNKNOWN == 0 {
            zombie.exit_status
        } else {
            task.exit_code().unwrap_or(zombie.exit_status)
        };
        report(EventKind::Reap, task, status, lifetime, || {
            Some(zombie.cgroup_id)
        });
    }
    0
}
