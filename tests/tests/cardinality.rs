//! The exporter's series stay bounded: K parents at most, removed cgroups dropped after grace.

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
