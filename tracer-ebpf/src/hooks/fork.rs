//! `sched_process_fork(parent, child)`: counts new processes per cgroup.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use tracer_common::EventKind;

use crate::{events::report, maps::update_cgroup, settings::configured, task::Task};

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    if !configured() {
        return 0;
    }
    let parent = Task::from_arg(ctx.arg(0));
    let child = Task::from_arg(ctx.arg(1));
    // The tracepoint fires for threads too; a new process is its own group leader.
    match (child.pid(), child.tgid()) {
        (Some(pid), Some(tgid)) if pid == tgid => {}
        _ => return 0,
    }
    // Charged to the parent's cgroup, where the fork happened.
    if let Some(cgroup_id) = parent.cgroup_id() {
        update_cgroup(cgroup_id, |c| c.fork());
        report(EventKind::Fork, child, 0, 0, || Some(cgroup_id));
    }
    0
}
