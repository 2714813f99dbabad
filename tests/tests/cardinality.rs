//! The exporter's series stay bounded: K parents and N cgroups at most, removed cgroups dropped
//! after grace.

use std::time::Duration;

use reapwatch_tests::{eventually, sample_value, Daemon, Helper, TestCgroup};

#[test]
fn parent_series_never_exceed_k() {
    let daemon = Daemon::start(&["--top-parents", "2"]);
    let cgroups: Vec<TestCgroup> = (0..3)
        .map(|i| TestCgroup::new(&format!("topk-{i}")))
        .collect();
    let helpers: Vec<Helper> = cgroups
        .iter()
        .zip([1, 2, 6])
        .map(|(c, n)| Helper::start("leak", n, c))
        .collect();
    let biggest = helpers[2].parent.to_string();
    let mut text = String::new();
    let seen = eventually(Duration::from_secs(10), || {
        text = daemon.scrape();
        sample_value(&text, "reapwatch_parent_zombies", &[("pid", &biggest)]) == Some(6.0)
    });
    assert!(seen, "{text}");
    let series = text
        .lines()
        .filter(|l| l.starts_with("reapwatch_parent_zombies{"))
        .count();
    assert_eq!(series, 2, "{text}");
    // The one with a single zombie is not among the top 2.
    let smallest = helpers[0].parent.to_string();
    assert_eq!(
        sample_value(&text, "reapwatch_parent_zombies", &[("pid", &smallest)]),
        None
    );
}

#[test]
fn cgroup_series_never_exceed_the_top_cgroups() {
    let daemon = Daemon::start(&["--top-cgroups", "2"]);
    let cgroups: Vec<TestCgroup> = (0..3)
        .map(|i| TestCgroup::new(&format!("topc-{i}")))
        .collect();
    let _helpers: Vec<Helper> = cgroups
        .iter()
        .zip([1, 2, 6])
        .map(|(c, n)| Helper::start("leak", n, c))
        .collect();
    let value = |text: &str, name: &str, cgroup: &TestCgroup| {
        sample_value(text, name, &[("cgroup", cgroup.host_path().as_str())])
    };
    let zombies = |text: &str, cgroup: &TestCgroup| value(text, "reapwatch_zombies", cgroup);
    let mut text = String::new();
    // Gauges at once, counters once the cgroup's attribution has settled.
    let seen = eventually(Duration::from_secs(20), || {
        text = daemon.scrape();
        zombies(&text, &cgroups[2]) == Some(6.0)
            && zombies(&text, &cgroups[1]) == Some(2.0)
            && [&cgroups[1], &cgroups[2]]
                .iter()
                .all(|c| value(&text, "reapwatch_process_forks_total", c).is_some())
    });
    assert!(seen, "{text}");
    // The node's other cgroups, with fewer zombies, are left out too: two series in all.
    let series = text
        .lines()
        .filter(|l| l.starts_with("reapwatch_process_forks_total{"))
        .count();
    assert_eq!(series, 2, "{text}");
    assert_eq!(zombies(&text, &cgroups[0]), None, "{text}");
    // Their zombies still count for the node.
    let node = sample_value(&text, "reapwatch_node_zombies", &[]);
    assert!(node.is_some_and(|n| n >= 9.0), "{node:?}");
}

#[test]
fn removed_cgroups_are_dropped_after_the_grace_period() {
    let daemon = Daemon::start(&["--gc-grace", "1s"]);
    let cgroup = TestCgroup::new("gc");
    let path = cgroup.host_path();
    let helper = Helper::start("storm", 5, &cgroup);
    let forks = || {
        sample_value(
            &daemon.scrape(),
            "reapwatch_process_forks_total",
            &[("cgroup", &path)],
        )
    };
    assert!(eventually(Duration::from_secs(10), || forks() == Some(5.0)));
    drop(helper);
    drop(cgroup);
    assert!(
        eventually(Duration::from_secs(15), || forks().is_none()),
        "series of the removed cgroup {path} still exported"
    );
}
