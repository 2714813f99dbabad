//! `sched_process_exit(task[, group_dead])`: processes whose last thread exits, and the
//! zombies they leave (see `zombie`). `group_dead` is an argument only from 6.16 on; the
//! live-thread count it is computed from works on every kernel.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use tracer_common::EventKind;

use crate::{
    events::report,
    maps::update_cgroup,
    task::{configured, Task},
    zombie,
};

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    if !configured() {
        return 0;
    }
    let task = Task::from_ptr(ctx.arg(0));
    if task.live_threads() == Some(0) {
        if let Some(cgroup_id) = task.cgroup_id() {
            update_cgroup(cgroup_id, |c| c.exits += 1);
            let status = task.exit_code().unwrap_or(0);
            report(EventKind::Exit, task, status, 0, cgroup_id);
        }
        zombie::record_if_left(task);
    }
    0
}
