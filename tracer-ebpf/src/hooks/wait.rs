//! `sched_process_wait(pid)`: remembers when each process last entered `do_wait()`, which
//! tells a parent that never waits from one that waits for the wrong children.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{EventKind, WaitRecord};

use crate::{
    events::report,
    maps::record_wait,
    task::{configured, now_ns, Task},
};

#[btf_tracepoint(function = "sched_process_wait")]
pub fn sched_process_wait(_ctx: BtfTracePointContext) -> i32 {
    if !configured() {
        return 0;
    }
    let current = Task::current();
    report(
        EventKind::Wait,
        current,
        0,
        0,
        current.cgroup_id().unwrap_or(0),
    );
    if let Some(process) = current.process_key() {
        record_wait(
            process.tgid,
            &WaitRecord {
                start_ticks: process.start_ticks,
                last_wait_ns: now_ns(),
            },
        );
    }
    0
}
