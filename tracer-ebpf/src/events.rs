//! Lifecycle events for `reapwatch trace`, built only while tracing is on.

use tracer_common::{Event, EventKind};

use crate::{
    clock::now_ns,
    maps::{emit, tracing},
    task::{Access, Task},
};

/// Reports `kind` for the process `process` leads.
#[inline(always)]
pub fn report<A: Access>(
    kind: EventKind,
    process: Task<A>,
    exit_status: i32,
    age_ns: u64,
    cgroup_id: impl FnOnce() -> Option<u64>,
) {
    if !tracing() {
        return;
    }
    let event = Event {
        time_ns: now_ns(),
        age_ns,
        cgroup_id: cgroup_id().unwrap_or(0),
        kind: kind as u32,
        pid: process.tgid().unwrap_or(0),
        ppid: process.real_parent().and_then(Task::tgid).unwrap_or(0),
        exit_status,
        comm: process.comm().unwrap_or([0; 16]),
    };
    emit(&event);
}
