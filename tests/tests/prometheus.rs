//! A real Prometheus scrapes `reapwatch serve` and answers PromQL about a leaking workload and
//! an autoreaping one.

use std::{fs, time::Duration};

use reapwatch_tests::{eventually, Daemon, Helper, Prometheus, TestCgroup};

/// The PrometheusRule the deployment ships, from which the alert under test is taken.
const PROMETHEUS_RULE: &str = include_str!("../../charts/reapwatch/files/reapwatch.rules.yaml");

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

/// A Prometheus rule file holding the shipped alert `name` alone: its expression as the
/// PrometheusRule has it.
fn shipped_alert(name: &str) -> String {
    let mut lines = PROMETHEUS_RULE
        .lines()
        .skip_while(|line| line.trim() != format!("- alert: {name}"));
    lines.next().unwrap_or_else(|| panic!("no alert {name}"));
    let expr = lines
        .map(str::trim)
        .find_map(|line| line.strip_prefix("expr: "))
        .unwrap_or_else(|| panic!("alert {name} has no one-line expr"));
    format!(
        "groups:\n  - name: shipped\n    rules:\n      - alert: {name}\n        expr: '{expr}'\n"
    )
}

/// A fresh cgroup that fills its pids.max in one burst, before reapwatch ever exported it:
/// Prometheus sees its counter series at zero first, so increase() counts the burst's zombies
/// and refused forks, and ReapwatchCgroupPidsFull fires on that single burst.
#[test]
fn the_first_burst_is_an_increase_and_fires_the_pids_alert() {
    let daemon = Daemon::start(&[]);
    let alert = "ReapwatchCgroupPidsFull";
    let prometheus = Prometheus::start_with_rules(daemon.port, &shipped_alert(alert));
    assert!(
        eventually(Duration::from_secs(60), || {
            prometheus.query("up{job=\"reapwatch\"} == 1").len() == 1
        }),
        "prometheus never scraped reapwatch"
    );
    let cgroup = TestCgroup::new("prom-burst");
    let pids_max = cgroup.path.join("pids.max");
    assert!(
        pids_max.exists(),
        "the tests' hierarchy has no pids controller"
    );
    // The helper and 5 zombies fill it; 3 forks are refused.
    fs::write(&pids_max, "6").unwrap();
    let _burst = Helper::start("leak-to-limit", 3, &cgroup);

    let path = cgroup.host_path();
    let created = format!("reapwatch_zombies_created_total{{cgroup=\"{path}\"}}");
    let refused = format!("reapwatch_cgroup_pids_fork_failures_total{{cgroup=\"{path}\"}}");
    let value = |promql: &str| prometheus.query(promql).first().map(|(_, v)| *v);
    assert!(
        eventually(Duration::from_secs(30), || value(&created) == Some(5.0)
            && value(&refused) == Some(3.0)),
        "prometheus never held the burst: created {:?}, refused {:?}",
        value(&created),
        value(&refused)
    );
    for series in [&created, &refused] {
        let increase = value(&format!("increase({series}[1m])"));
        assert!(
            increase.is_some_and(|v| v > 0.0),
            "increase({series}[1m]) is {increase:?}: the first burst was not seen"
        );
    }
    let firing = format!("ALERTS{{alertname=\"{alert}\",alertstate=\"firing\",cgroup=\"{path}\"}}");
    assert!(
        eventually(Duration::from_secs(20), || !prometheus
            .query(&firing)
            .is_empty()),
        "{alert} did not fire on the burst"
    );
}
