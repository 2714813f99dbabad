//! `sched_process_wait(pid)`: remembers when each process last entered `do_wait()`, which
//! tells a parent that never waits from one that waits for the wrong children.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::EventKind;

use crate::{
    clock::coarse_now_ns,
    events::report,
    maps::record_wait,
    settings::configured,
    task::{Access, Task},
};

#[btf_tracepoint(function = "sched_process_wait")]
pub fn sched_process_wait(_ctx: BtfTracePointContext) -> i32 {
    if !configured() {
        return 0;
    }
    // The tracepoint's only argument is a `struct pid`: the waiter is the current task, typed
    // from 5.11 on and read by the helper before.
    match Task::current_typed() {
        Some(current) => remember(current),
        None => remember(Task::current()),
    }
    0
}

#[inline(always)]
fn remember<A: Access>(waiter: Task<A>) {
    report(EventKind::Wait, waiter, 0, 0, || waiter.cgroup_id());
    if let Some(process) = waiter.process_key() {
        record_wait(&process, coarse_now_ns());
    }
}
