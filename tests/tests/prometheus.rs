//! A real Prometheus scrapes `reapwatch serve` and answers PromQL about a leaking workload and
//! an autoreaping one.

use std::time::Duration;

use reapwatch_tests::{eventually, Daemon, Helper, Prometheus, TestCgroup};

#[test]
fn promql_sees_the_leak_and_not_the_autoreaper() {
    let daemon = Daemon::start(&[]);
    let prometheus = Prometheus::start(daemon.port);
    assert!(
        eventually(Duration::from_secs(60), || {
            prometheus.query("up{job=\"reapwatch\"} == 1").len() == 1
        }),
        "prometheus never scraped reapwatch"
    );

    let leaking = TestCgroup::new("prom-leak");
    let autoreaping = TestCgroup::new("prom-ignore");
    // Stage 0 forks without leaving a zombie: the cgroup's series exist at zero first, so
    // the later zombie is an increase Prometheus can rate.
    let mut leak = Helper::start("leader-exit", 1, &leaking);
    let _ignore = Helper::start("ignore", 20, &autoreaping);
    let series = |cgroup: &TestCgroup| {
        format!(
            "reapwatch_zombies_created_total{{cgroup=\"{}\"}}",
            cgroup.host_path()
        )
    };
    assert!(eventually(Duration::from_secs(30), || {
        prometheus.query(&series(&leaking)).len() == 1
            && prometheus.query(&series(&autoreaping)).len() == 1
    }));
    leak.step();

    let rate = |cgroup: &TestCgroup| {
        prometheus
            .query(&format!("rate({}[1m])", series(cgroup)))
            .first()
            .map(|(_, value)| *value)
    };
    assert!(
        eventually(Duration::from_secs(30), || rate(&leaking)
            .is_some_and(|r| r > 0.0)),
        "rate of the leaking cgroup stayed {:?}",
        rate(&leaking)
    );
    assert_eq!(rate(&autoreaping), Some(0.0));
    let forks = prometheus.query(&format!(
        "reapwatch_process_forks_total{{cgroup=\"{}\"}}",
        autoreaping.host_path()
    ));
    assert_eq!(forks.first().map(|(_, v)| *v), Some(20.0));
}
