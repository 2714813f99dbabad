//! `sched_process_fork(parent, child)`: counts new processes per cgroup.

use aya_ebpf::{
    helpers::bpf_get_current_cgroup_id, macros::btf_tracepoint, programs::BtfTracePointContext,
};

use crate::{
    maps::update_cgroup,
    task::{configured, Task},
};

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    if !configured() {
        return 0;
    }
    let child = Task::from_ptr(ctx.arg(1));
    // The tracepoint fires for threads too; a new process is its own group leader.
    let (Some(pid), Some(tgid)) = (child.pid(), child.tgid()) else {
        return 0;
    };
    if pid == tgid {
        // `current` is the parent, and the child starts in the parent's cgroup.
        update_cgroup(unsafe { bpf_get_current_cgroup_id() }, |c| c.forks += 1);
    }
    0
}
