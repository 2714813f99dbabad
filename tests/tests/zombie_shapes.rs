//! Each shape of exit, made for real, traced by the real programs, compared with `/proc`.
//!
//! Every test loads its own tracer *before* the workload starts and never reconciles, so
//! everything it reports was seen by the kernel programs (none of it is `/proc` seeding).

use std::{collections::BTreeMap, time::Duration};

use reapwatch::{
    kernel::MapSizes,
    state::{ChildState, StateEngine},
};
use reapwatch_tests::{eventually, load_engine, proc_unreaped_children, Helper, TestCgroup};
use tracer_common::{CgroupCounters, Loss};

fn engine() -> StateEngine {
    load_engine(MapSizes::default())
}

fn traced_children(engine: &mut StateEngine, parent: u32) -> BTreeMap<u32, ChildState> {
    engine
        .parents()
        .expect("read tracer state")
        .into_iter()
        .filter(|p| p.pid() == parent)
        .flat_map(|p| p.children)
        .map(|c| (c.pid(), c))
        .collect()
}

fn counters(engine: &StateEngine, cgroup: &TestCgroup) -> CgroupCounters {
    engine
        .probes()
        .cgroup_counters()
        .expect("read counters")
        .get(&cgroup.id())
        .copied()
        .unwrap_or_default()
}

/// Waits until `/proc` shows `expected` unreaped children of `parent` and the tracer agrees,
/// then checks that they agree exactly: same pids, comms and exit codes, all seen by the
/// kernel programs.
fn assert_matches_proc(engine: &mut StateEngine, parent: u32, expected: usize) {
    let agreed = eventually(Duration::from_secs(10), || {
        let truth = proc_unreaped_children(parent);
        truth.len() == expected && traced_children(engine, parent).keys().eq(truth.keys())
    });
    let truth = proc_unreaped_children(parent);
    let traced = traced_children(engine, parent);
    assert!(
        agreed,
        "parent {parent}: /proc has {:?}, tracer has {:?}, expected {expected}",
        truth.keys().collect::<Vec<_>>(),
        traced.keys().collect::<Vec<_>>()
    );
    for (pid, stat) in &truth {
        let child = &traced[pid];
        assert_eq!(child.comm(), stat.comm.as_slice(), "comm of {pid}");
        assert!(
            !child.age_is_lower_bound(),
            "{pid} was not seen by the kernel programs"
        );
        if let Some(status) = stat.exit_status {
            assert_eq!(child.zombie.exit_status, status, "wait status of {pid}");
        }
        if let Some(exit_signal) = stat.exit_signal {
            assert_eq!(
                child.zombie.exit_signal, exit_signal,
                "exit signal of {pid}"
            );
        }
    }
}

/// Zombies the kernel recorded for this cgroup's parents, once the counters settle.
fn assert_created(engine: &StateEngine, cgroup: &TestCgroup, expected: u64) {
    let settled = eventually(Duration::from_secs(5), || {
        counters(engine, cgroup).zombies_created == expected
    });
    assert!(
        settled,
        "zombies created: {:?}, expected {expected}",
        counters(engine, cgroup)
    );
}

#[test]
fn unreaped_children_are_zombies_of_their_parent() {
    let mut engine = engine();
    let cgroup = TestCgroup::new("leak");
    let helper = Helper::start("leak", 5, &cgroup);
    assert_matches_proc(&mut engine, helper.parent, 5);
    assert_created(&engine, &cgroup, 5);
    let traced = traced_children(&mut engine, helper.parent);
    assert!(traced.values().all(|c| c.exit_code() == Some(7)));
    assert_eq!(counters(&engine, &cgroup).forks, 5);
}

#[test]
fn zombies_that_share_a_slot_overflow_to_the_hash_map() {
    // Room for 4 zombies: a table of one slot, and the hash map for the rest.
    let mut engine = load_engine(MapSizes {
        zombies: 4,
        ..MapSizes::default()
    });
    let cgroup = TestCgroup::new("overflow");
    let mut helper = Helper::start("leak", 5, &cgroup);
    let mut losses = [0; tracer_common::LOSS_KINDS as usize];
    if engine.probes().paths().zombie_store == "hash" {
        // Before 5.12 there is no slot table: the hash map holds 4 and the fifth is a
        // counted loss (this engine never reconciles, so it stays unseen).
        let counted = eventually(Duration::from_secs(10), || {
            proc_unreaped_children(helper.parent).len() == 5
                && traced_children(&mut engine, helper.parent).len() == 4
        });
        assert!(counted, "{:?}", traced_children(&mut engine, helper.parent));
        losses[Loss::ZombiesMapFull as usize] = 1;
        assert_eq!(engine.probes().losses().unwrap(), losses);
        return;
    }
    // 1 in the slot, 4 in the hash map, which is then full.
    assert_matches_proc(&mut engine, helper.parent, 5);
    assert_created(&engine, &cgroup, 5);
    helper.step();
    let reaped = eventually(Duration::from_secs(10), || {
        engine.refresh().expect("refresh");
        traced_children(&mut engine, helper.parent).is_empty()
            && engine
                .cgroups()
                .expect("counters")
                .iter()
                .any(|c| c.id == cgroup.id() && c.counters.zombies_reaped == 5)
    });
    assert!(reaped, "{:?}", counters(&engine, &cgroup));
    assert_eq!(engine.probes().losses().unwrap(), losses);
}

#[test]
fn sigchld_ignored_autoreaps() {
    let mut engine = engine();
    let cgroup = TestCgroup::new("ignore");
    let helper = Helper::start("ignore", 20, &cgroup);
    assert_matches_proc(&mut engine, helper.parent, 0);
    let c = counters(&engine, &cgroup);
    assert_eq!((c.forks, c.zombies_created), (20, 0), "{c:?}");
    assert!(eventually(Duration::from_secs(5), || counters(
        &engine, &cgroup
    )
    .exits
        == 20));
}

#[test]
fn sa_nocldwait_autoreaps() {
    let mut engine = engine();
    let cgroup = TestCgroup::new("nocldwait");
    let helper = Helper::start("nocldwait", 20, &cgroup);
    assert_matches_proc(&mut engine, helper.parent, 0);
    let c = counters(&engine, &cgroup);
    assert_eq!((c.forks, c.zombies_created), (20, 0), "{c:?}");
}

#[test]
fn thread_exits_are_not_zombies() {
    let mut engine = engine();
    let cgroup = TestCgroup::new("threads");
    let helper = Helper::start("threads", 20, &cgroup);
    assert_matches_proc(&mut engine, helper.parent, 0);
    let c = counters(&engine, &cgroup);
    assert_eq!((c.forks, c.exits, c.zombies_created), (0, 0, 0), "{c:?}");
}

#[test]
fn leader_exiting_before_its_threads_is_a_zombie_only_after_the_last_thread() {
    let mut engine = engine();
    let cgroup = TestCgroup::new("leader-exit");
    let mut helper = Helper::start("leader-exit", 1, &cgroup);
    // /proc shows the leader as Z with Threads: 2; nothing is reapable yet.
    assert_matches_proc(&mut engine, helper.parent, 0);
    assert_created(&engine, &cgroup, 0);
    helper.step();
    assert_matches_proc(&mut engine, helper.parent, 1);
    assert_created(&engine, &cgroup, 1);
}

#[test]
fn exec_from_a_thread_is_not_a_zombie() {
    let mut engine = engine();
    let cgroup = TestCgroup::new("exec-thread");
    let mut helper = Helper::start("exec-thread", 1, &cgroup);
    assert_matches_proc(&mut engine, helper.parent, 0);
    assert_created(&engine, &cgroup, 0);
    // The process that exec'd from a thread is still tracked under its pid: killed, it is a
    // zombie like any other.
    helper.step();
    assert_matches_proc(&mut engine, helper.parent, 1);
    assert_created(&engine, &cgroup, 1);
    let traced = traced_children(&mut engine, helper.parent);
    assert!(traced
        .values()
        .all(|c| c.killed_by() == Some(libc::SIGKILL)));
}

#[test]
fn exit_signal_other_than_sigchld_leaks() {
    let mut engine = engine();
    let cgroup = TestCgroup::new("exit-signal");
    let helper = Helper::start("exit-signal", 4, &cgroup);
    assert_matches_proc(&mut engine, helper.parent, 4);
    assert_created(&engine, &cgroup, 4);
    let traced = traced_children(&mut engine, helper.parent);
    assert!(traced
        .values()
        .all(|c| c.zombie.exit_signal == 0 && c.exit_code() == Some(3)));
}

#[test]
fn zombies_and_orphans_move_to_the_subreaper() {
    let mut engine = engine();
    let cgroup = TestCgroup::new("orphans");
    let mut helper = Helper::start("orphans", 3, &cgroup);
    // The middle process (a zombie itself) and its 3 zombies now belong to the helper.
    assert_matches_proc(&mut engine, helper.parent, 4);
    // Its 3 live orphans exit as the helper's children.
    helper.step();
    assert_matches_proc(&mut engine, helper.parent, 7);
    assert_created(&engine, &cgroup, 7);
    assert!(engine.totals().reparented >= 3);
}

#[test]
fn pid_namespace_init_that_never_waits_collects_zombies() {
    let mut engine = engine();
    let cgroup = TestCgroup::new("pidns-init");
    let helper = Helper::start("pidns-init", 5, &cgroup);
    assert_ne!(helper.parent, 0);
    // 5 children, the middle process, and its orphaned child reparented to the init.
    assert_matches_proc(&mut engine, helper.parent, 7);
    assert_created(&engine, &cgroup, 7);
}

#[test]
fn reused_pid_is_a_different_process() {
    let mut engine = engine();
    let cgroup = TestCgroup::new("reuse");
    let mut helper = Helper::start("reuse", 1, &cgroup);
    let pid = helper.children[0];
    assert_matches_proc(&mut engine, helper.parent, 1);
    assert_eq!(
        traced_children(&mut engine, helper.parent)[&pid].exit_code(),
        Some(11)
    );
    let first_key = traced_children(&mut engine, helper.parent)[&pid].key;

    // Reap the first, start a second process with the same pid that also becomes a zombie.
    helper.step();
    assert!(eventually(Duration::from_secs(5), || {
        counters(&engine, &cgroup).zombies_reaped == 1
    }));
    assert_matches_proc(&mut engine, helper.parent, 1);
    let second = traced_children(&mut engine, helper.parent)[&pid].clone();
    assert_ne!(second.key, first_key);
    assert_eq!(second.exit_code(), Some(22));
    let c = counters(&engine, &cgroup);
    assert_eq!((c.zombies_created, c.zombies_reaped), (2, 1), "{c:?}");
}
