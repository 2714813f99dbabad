//! Deciding, as a process dies, whether it leaves an unreaped child.
//!
//! `sched_process_exit` fires in `do_exit()` after the thread has been counted out of its
//! group (`signal->live`) and its exit code set, and before `exit_notify()` hands the process
//! to its parent. When the last thread of a group gets there, `exit_notify()` (or, if the
//! leader went first, the release of this last thread) will notify the parent, and
//! `do_notify_parent()`'s rule says what follows: the kernel reaps at once when the child is not
//! traced, exits with SIGCHLD, and the parent ignores SIGCHLD or set `SA_NOCLDWAIT`; otherwise
//! the process stays a zombie until reaped. Applying that rule here needs no `sched_switch`
//! hook, so context switches cost nothing. Exits that leave nothing are excluded on the way:
//! thread exits (the group lives on), and an exec from another thread (the exec'ing thread
//! never exits, so the group never dies).
//!
//! The record is made microseconds before the process turns `Z` in /proc; userspace allows
//! young records that lead /proc. A parent that changes its SIGCHLD disposition, or dies, in
//! those microseconds is not followed here: the record is then healed, or reparented, from
//! /proc.

use tracer_common::{EventKind, ProcessKey, Zombie, SIGCHLD};

use crate::{
    clock::coarse_now_ns,
    events::report,
    maps::insert_zombie,
    task::{Cgroup, Task},
};

/// Called for the last thread of a group to exit, with its cgroup. Returns the parent's
/// cgroup id if the group left a zombie not recorded before; the caller counts it there.
/// `SLOTS`: as for [`insert_zombie`].
#[inline(always)]
pub fn record_if_left<const SLOTS: bool>(dying: Task, dying_cgroup: Option<Cgroup>) -> Option<u64> {
    let leader = dying.group_leader()?;
    let (exit_signal, parent) = (leader.exit_signal()?, leader.real_parent()?);
    if leaves_zombie(leader, parent, exit_signal)? {
        let cgroup_id = leader.cgroup_id_near(dying_cgroup).unwrap_or(0);
        let parent_cgroup_id = parent.cgroup_id_near(dying_cgroup).unwrap_or(0);
        record::<SLOTS>(leader, parent, exit_signal, cgroup_id, parent_cgroup_id)
    } else {
        None
    }
}

#[inline(always)]
fn leaves_zombie(leader: Task, parent: Task, exit_signal: i32) -> Option<bool> {
    if leader.is_ptraced()? || exit_signal != SIGCHLD {
        // Never autoreaped: a ptraced child is reported to its debugger first; any other exit
        // signal (0 included) is not subject to SIGCHLD's disposition.
        return Some(true);
    }
    Some(!parent.autoreaps_children()?)
}

#[inline(always)]
fn record<const SLOTS: bool>(
    leader: Task,
    parent: Task,
    exit_signal: i32,
    cgroup_id: u64,
    parent_cgroup_id: u64,
) -> Option<u64> {
    let (tgid, start_ticks) = (leader.tgid()?, leader.start_ticks()?);
    let parent_key = parent.process_key()?;
    let zombie = Zombie {
        parent: parent_key,
        exit_ns: coarse_now_ns(),
        cgroup_id,
        parent_cgroup_id,
        exit_status: leader.exit_code().unwrap_or(0),
        exit_signal,
        flags: 0,
        comm: leader.comm().unwrap_or([0; 16]),
        _pad: 0,
    };
    // Two threads finishing together can both see the group dead: the first insert wins.
    if !insert_zombie::<SLOTS>(&ProcessKey::new(tgid, start_ticks), &zombie) {
        return None;
    }
    report(EventKind::Zombie, leader, zombie.exit_status, 0, || {
        Some(cgroup_id)
    });
    Some(parent_cgroup_id)
}
