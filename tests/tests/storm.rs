//! Thousands of fork/exit/wait round trips: every zombie created is reaped, exactly once.

use std::time::Duration;

use reapwatch::{kernel::MapSizes, state::StateEngine};
use reapwatch_tests::{eventually, load_engine, Helper, TestCgroup};
use tracer_common::CgroupCounters;

const ROUND_TRIPS: u64 = 5000;

#[test]
fn fork_storm_counts_exactly() {
    let mut engine = load_engine(MapSizes::default());
    let cgroup = TestCgroup::new("storm");
    let helper = Helper::start("storm", ROUND_TRIPS as u32, &cgroup);

    let counters = |engine: &mut StateEngine| -> CgroupCounters {
        engine.refresh().expect("refresh");
        let cgroups = engine.cgroups().expect("counters");
        cgroups
            .iter()
            .find(|c| c.id == cgroup.id())
            .map(|c| c.counters)
            .unwrap_or_default()
    };
    let settled = eventually(Duration::from_secs(10), || {
        counters(&mut engine).zombies_reaped >= ROUND_TRIPS
    });
    let c = counters(&mut engine);
    assert!(settled, "{c:?}");
    assert_eq!(c.forks, ROUND_TRIPS, "{c:?}");
    assert_eq!(c.exits, ROUND_TRIPS, "{c:?}");
    assert_eq!(c.zombies_created, ROUND_TRIPS, "{c:?}");
    assert_eq!(c.zombies_reaped, ROUND_TRIPS, "{c:?}");

    let live = engine
        .parents()
        .unwrap()
        .into_iter()
        .filter(|p| p.pid() == helper.parent)
        .count();
    assert_eq!(live, 0, "no zombie of the storm is left");
    // Reaps the kernel reported carry a lifetime; those closed from /proc do not.
    let histogram = engine.probes().lifetimes().unwrap();
    assert_eq!(histogram.buckets.iter().sum::<u64>(), histogram.count);
    assert!(histogram.count + engine.totals().reaped_late >= ROUND_TRIPS);
    let misses: u64 = engine
        .probes()
        .hook_stats()
        .unwrap()
        .iter()
        .map(|h| h.recursion_misses)
        .sum();
    assert_eq!(misses, 0);
    assert_eq!(
        engine.probes().losses().unwrap(),
        [0; tracer_common::LOSS_KINDS as usize]
    );
}

/// Processes of 16 runnable (spinning) threads exit through exit_group() together, round
/// after round: every thread of a group is in do_exit() at once, and several may find the
/// group's live count at zero. Each process counts one exit, whatever its threads do. (Taking
/// a zero count as the last thread counted 262 exits for these 250 processes on 5.10, whose
/// tracepoint comes after `exit_mm()`; it did not reproduce on the 6.18 build machine.)
#[test]
fn spinning_thread_groups_count_one_exit_each() {
    const PROCESSES: u32 = 24;
    const ROUNDS: u32 = 10;
    let mut engine = load_engine(MapSizes::default());
    let cgroup = TestCgroup::new("exit-groups");
    for _ in 0..ROUNDS {
        drop(Helper::start("spinning-groups", PROCESSES, &cgroup));
    }
    let counters = |engine: &mut StateEngine| -> CgroupCounters {
        engine.refresh().expect("refresh");
        let cgroups = engine.cgroups().expect("counters");
        cgroups
            .iter()
            .find(|c| c.id == cgroup.id())
            .map(|c| c.counters)
            .unwrap_or_default()
    };
    // The groups and each round's helper.
    let expected = u64::from(ROUNDS * (PROCESSES + 1));
    eventually(Duration::from_secs(10), || {
        counters(&mut engine).exits >= expected
    });
    let c = counters(&mut engine);
    assert_eq!(c.forks, u64::from(ROUNDS * PROCESSES), "{c:?}");
    assert_eq!(c.exits, expected, "{c:?}");
}
