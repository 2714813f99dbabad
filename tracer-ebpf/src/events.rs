//! Lifecycle events for `reapwatch trace`, built only while tracing is on.

use aya_ebpf::{macros::map, maps::RingBuf};
use tracer_common::{Event, EventKind, Loss};

use crate::{
    clock::now_ns,
    losses::count_loss,
    settings::tracing,
    task::{Access, Task},
};

/// Lifecycle events for `reapwatch trace`; one page unless tracing sizes it up.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4096, 0);

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
    if EVENTS.output::<Event>(&event, 0).is_err() {
        count_loss(Loss::EventsDropped);
    }
}
