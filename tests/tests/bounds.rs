//! What `top` and `trace` keep per cgroup is dropped when the cgroup goes.

use std::time::Duration;

use reapwatch::{commands::forget_removed_cgroups, kernel::MapSizes, state::StateEngine};
use reapwatch_tests::{eventually, load_engine, Helper, TestCgroup};

fn counted(engine: &StateEngine, id: u64) -> bool {
    engine
        .probes()
        .cgroup_counters()
        .expect("read counters")
        .contains_key(&id)
}

#[test]
fn counters_of_removed_cgroups_are_forgotten() {
    let mut engine = load_engine(MapSizes::default());
    let kept = TestCgroup::new("forget-kept");
    let removed = TestCgroup::new("forget-removed");
    let (kept_id, removed_id) = (kept.id(), removed.id());
    drop(Helper::start("storm", 3, &kept));
    drop(Helper::start("storm", 3, &removed));
    assert!(eventually(Duration::from_secs(5), || {
        counted(&engine, kept_id) && counted(&engine, removed_id)
    }));
    // Both paths resolved while both exist.
    forget_removed_cgroups(&mut engine).unwrap();
    assert!(counted(&engine, kept_id) && counted(&engine, removed_id));

    let removed_path = removed.path.clone();
    drop(removed);
    assert!(
        !removed_path.exists(),
        "the test could not remove its cgroup"
    );
    forget_removed_cgroups(&mut engine).unwrap();
    assert!(
        !counted(&engine, removed_id),
        "counters of a removed cgroup kept"
    );
    assert!(counted(&engine, kept_id), "counters of a live cgroup lost");
}
