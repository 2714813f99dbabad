//! Datadog, the incident's own monitoring, tested with the Agent's own check code: the
//! OpenMetrics V2 check of `datadog-checks-base` (with the stub aggregator of the Agent's own
//! check tests, which refuses the tags Datadog reserves), configured from the Autodiscovery
//! annotation the chart renders, against a live `serve` started with the args the chart's
//! Datadog install renders. `%%host%%` is 127.0.0.1 and the port the test's.

use std::{collections::BTreeSet, fs, time::Duration};

use reapwatch_tests::{
    datadog::{datadog_names, run_check, Install, Received, Submission},
    eventually, exposed_samples, free_port, get, proc_unreaped_children, sample_value, Daemon,
    ExposedSample, Helper, Pki, TestCgroup,
};
use serde_json::{json, Value};

/// Tag names Datadog reserves for unified service tagging and host identity
/// (`datadog_checks.base.utils.tagging.GENERIC_TAGS`).
const RESERVED_TAGS: &[&str] = &[
    "cluster_name",
    "clustername",
    "cluster",
    "clusterid",
    "cluster_id",
    "env",
    "host_name",
    "hostname",
    "host",
    "service",
    "version",
];

/// A `serve` started with the rendered args, and its health port.
fn serve(install: &Install, replace: &[(&str, &str)]) -> Daemon {
    let health = free_port();
    let args = install.serve_args(health, replace);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = Daemon::spawn_with(&[], &args);
    let ready = eventually(Duration::from_secs(90), || {
        daemon.assert_running();
        get(&format!("http://127.0.0.1:{health}/readyz"), &[]).is_some_and(|(s, _)| s == 200)
    });
    assert!(ready, "reapwatch serve never became ready with {args:?}");
    daemon
}

/// One run of the check between two scrapes of the same sample (the chart's 5 s sampling):
/// the exposition the check saw, and what it sent.
fn run_on_one_sample(daemon: &Daemon, checks: &Value) -> (String, Received) {
    let stamp = |text: &str| sample_value(text, "reapwatch_last_sample_timestamp_seconds", &[]);
    for _ in 0..8 {
        let before = daemon.scrape();
        let received = run_check(checks);
        let after = daemon.scrape();
        if stamp(&before) == stamp(&after) {
            return (before, received);
        }
    }
    panic!("never one run of the check within one sample");
}

/// The tags the check makes of a sample's labels: renamed as the instance's `rename_labels`
/// says, and the endpoint's.
fn expected_tags(instance: &Value, labels: &[(String, String)]) -> BTreeSet<String> {
    let renamed = |name: &str| {
        instance["rename_labels"][name]
            .as_str()
            .unwrap_or(name)
            .to_owned()
    };
    labels
        .iter()
        .map(|(name, value)| format!("{}:{value}", renamed(name)))
        .chain([format!(
            "endpoint:{}",
            instance["openmetrics_endpoint"].as_str().expect("endpoint")
        )])
        .collect()
}

/// The value the exposition says, as the Agent's parser reads it: the same float, but for
/// the last bits of a timestamp (1796184962.1406345 arrived as ...343); counts are exact.
fn same_value(received: f64, served: f64) -> bool {
    (received - served).abs() <= 4.0 * f64::EPSILON * served.abs()
}

/// Every sample of `exposed` that `wanted` selects arrived, under its Datadog name, tags and
/// type, with its value; histogram buckets (but +Inf, which is `.count`) as monotonic counts.
fn assert_arrived_exactly(
    instance: &Value,
    exposed: &[ExposedSample],
    received: &Received,
    wanted: impl Fn(&ExposedSample) -> bool,
) -> usize {
    let (mut checked, mut missing) = (0, Vec::new());
    for sample in exposed.iter().filter(|s| wanted(s)) {
        let names = datadog_names(instance, &sample.family, &sample.kind)
            .unwrap_or_else(|| panic!("{} is served but not mapped", sample.family));
        let (name, kind) = match sample.kind.as_str() {
            "gauge" => (&names[0], "gauge"),
            "counter" => (&names[0], "monotonic_count"),
            "histogram" => {
                let suffix = sample.name.rsplit('_').next().expect("a suffix");
                let le = sample.labels.iter().find(|(k, _)| k == "le");
                if le.is_some_and(|(_, v)| v == "+Inf") {
                    continue;
                }
                let name = names
                    .iter()
                    .find(|n| n.ends_with(&format!(".{suffix}")))
                    .expect("bucket, sum or count");
                (name, "monotonic_count")
            }
            other => panic!("{}: unexpected type {other}", sample.family),
        };
        let labels: Vec<(String, String)> = sample
            .labels
            .iter()
            .filter(|(k, _)| k != "le")
            .cloned()
            .collect();
        let tags = expected_tags(instance, &labels);
        let matching: Vec<&Submission> = received
            .metrics
            .iter()
            .filter(|m| {
                m.name == *name
                    && same_value(m.value, sample.value)
                    && tags.iter().all(|t| m.tags.contains(t))
                    && m.tags.len() == tags.len() + usize::from(sample.name.ends_with("_bucket"))
            })
            .collect();
        if matching.is_empty() || matching.iter().any(|m| m.kind != kind) {
            missing.push(format!(
                "{} {:?} = {} as {kind} {name}; received {:?}",
                sample.name,
                sample.labels,
                sample.value,
                received.find(name, &[]).first()
            ));
        }
        checked += 1;
    }
    assert!(
        missing.is_empty(),
        "{} of {checked} series did not arrive:\n{}",
        missing.len(),
        missing.join("\n")
    );
    checked
}

fn proc_number(path: &str) -> f64 {
    fs::read_to_string(path)
        .expect(path)
        .trim()
        .parse()
        .expect(path)
}

/// No tag Datadog reserves, and the check's run was clean: no error, no warning (a dropped
/// metric past `max_returned_metrics` is a warning), its health check OK.
fn assert_clean(received: &Received) {
    assert_eq!(received.error, None, "the check failed");
    assert_eq!(received.warnings, Vec::<String>::new(), "the check warned");
    assert_eq!(received.health, Some(0), "reapwatch.openmetrics.health");
    for metric in &received.metrics {
        for tag in &metric.tags {
            let name = tag.split(':').next().unwrap_or_default();
            assert!(
                !RESERVED_TAGS.contains(&name),
                "{}: reserved tag {tag}",
                metric.name
            );
        }
    }
}

/// The metric names in a Datadog monitor query: its words in the namespace `namespace`.
fn monitor_metrics<'q>(query: &'q str, namespace: &str) -> Vec<&'q str> {
    let prefix = format!("{namespace}.");
    query
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter(|word| word.starts_with(&prefix))
        .collect()
}

/// A kubelet-shaped container cgroup (cgroupfs driver) below `node`.
fn container(node: &TestCgroup, pod: u32, container: u32) -> TestCgroup {
    node.nested(&format!(
        "kubepods/burstable/pod{pod:08x}-0000-4000-8000-{pod:012x}/{:064x}",
        u64::from(pod) * 2 + u64::from(container) + 1
    ))
}

#[test]
fn the_agent_receives_every_served_series_exactly() {
    let install = Install::render("datadog-only");
    let node = TestCgroup::new("dd-node");
    let leaking = container(&node, 1, 0);
    fs::write(leaking.path.join("pids.max"), "1000").expect("pids.max");
    let leak = Helper::start("leak", 3, &leaking);
    let daemon = serve(&install, &[]);
    let checks = install.resolved(daemon.port, &[]);
    let instance = &checks["openmetrics"]["instances"][0];

    // The leak's counters settle once its attribution has (up to 12 s).
    let (path, parent) = (leaking.host_path(), leak.parent.to_string());
    let settled = eventually(Duration::from_secs(40), || {
        let text = daemon.scrape();
        sample_value(
            &text,
            "reapwatch_zombies_created_total",
            &[("cgroup", &path)],
        ) == Some(3.0)
            && sample_value(&text, "reapwatch_parent_zombies", &[("pid", &parent)]) == Some(3.0)
    });
    assert!(settled, "{}", daemon.scrape());
    let (exposition, received) = run_on_one_sample(&daemon, &checks);
    assert_clean(&received);

    // Every served series arrived, and nothing else.
    let exposed = exposed_samples(&exposition);
    let checked = assert_arrived_exactly(instance, &exposed, &received, |_| true);
    assert_eq!(received.metrics.len(), checked, "{:?}", received.metrics);

    // Against /proc.
    assert_eq!(proc_unreaped_children(leak.parent).len(), 3);
    let cgroup = [("cgroup", path.as_str())];
    for (name, tags, truth) in [
        ("reapwatch.zombies", &cgroup[..], 3.0),
        ("reapwatch.zombies_created.count", &cgroup[..], 3.0),
        (
            "reapwatch.parent_zombies",
            &[("pid", parent.as_str())][..],
            3.0,
        ),
        ("reapwatch.cgroup_pids_max", &cgroup[..], 1000.0),
        (
            "reapwatch.cgroup_pids_current",
            &cgroup[..],
            proc_number(&format!("{}/pids.current", leaking.path.display())),
        ),
        (
            "reapwatch.node_pid_max",
            &[],
            proc_number("/proc/sys/kernel/pid_max"),
        ),
        (
            "reapwatch.node_threads_max",
            &[],
            proc_number("/proc/sys/kernel/threads-max"),
        ),
    ] {
        assert_eq!(received.value(name, tags), truth, "{name} {tags:?}");
    }
    let build = received.find("reapwatch.build_info", &[]);
    assert_eq!(build.len(), 1);
    assert_eq!(build[0].value, 1.0);
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(build[0].tag("kernel"), Some(release.trim()));
    assert_eq!(
        build[0].tag("reapwatch_version"),
        Some(env!("CARGO_PKG_VERSION"))
    );

    // The monitors query only names the Agent sends: received here, or the mapped name of a
    // family this node does not serve now (the forecasts, absent when nothing grows).
    let served: BTreeSet<&str> = exposed.iter().map(|s| s.family.as_str()).collect();
    let received_names: BTreeSet<&str> = received.metrics.iter().map(|m| m.name.as_str()).collect();
    let contract = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/reapwatch/files/metrics.txt"
    ))
    .expect("metrics.txt");
    let unserved: BTreeSet<String> = contract
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?, words.next()?))
        })
        .filter(|(family, _)| !served.contains(family))
        .flat_map(|(family, kind)| datadog_names(instance, family, kind).expect("mapped"))
        .collect();
    let monitors: Vec<Value> = serde_json::from_str(
        &fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/reapwatch/files/datadog/monitors.json"
        ))
        .expect("monitors.json"),
    )
    .expect("JSON");
    for monitor in &monitors {
        let query = monitor["query"].as_str().expect("query");
        let metrics = monitor_metrics(query, instance["namespace"].as_str().expect("namespace"));
        assert!(!metrics.is_empty(), "no metric in {query}");
        for metric in metrics {
            assert!(
                received_names.contains(metric) || unserved.contains(metric),
                "monitor {}: {metric} is not sent by the Agent",
                monitor["name"]
            );
        }
    }
}

#[test]
fn a_large_node_stays_under_the_checks_limit() {
    let install = Install::render("datadog-only");
    let node = TestCgroup::new("dd-large");
    // 200 pods of two containers, each forking now and then, and a leak in one more.
    let busy: Vec<(Helper, TestCgroup)> = (0..400)
        .map(|i| {
            let cgroup = container(&node, 10 + i / 2, i % 2);
            (Helper::start("busy", 2000, &cgroup), cgroup)
        })
        .collect();
    let leaking = container(&node, 1, 0);
    let leak = Helper::start("leak", 5, &leaking);
    let daemon = serve(&install, &[]);
    let checks = install.resolved(daemon.port, &[]);
    let instance = &checks["openmetrics"]["instances"][0];
    let (path, parent) = (leaking.host_path(), leak.parent.to_string());
    let settled = eventually(Duration::from_secs(40), || {
        let text = daemon.scrape();
        sample_value(
            &text,
            "reapwatch_zombies_created_total",
            &[("cgroup", &path)],
        ) == Some(5.0)
    });
    assert!(settled, "the leak's counters never settled");
    // The busy containers were first seen at their first fork, up to 2 s after the leak's
    // zombies: their counters settle a little later, and the next 5 s sample shows them.
    std::thread::sleep(Duration::from_secs(8));

    let (exposition, received) = run_on_one_sample(&daemon, &checks);
    let limit = instance["max_returned_metrics"].as_f64().unwrap_or(2000.0);
    assert!(
        received.metrics.len() as f64 <= limit,
        "{} metrics past the limit {limit}",
        received.metrics.len()
    );
    let exposed = exposed_samples(&exposition);
    // The custom-metric count of the README's table.
    eprintln!(
        "{} series served, {} metrics received, max_returned_metrics {limit}",
        exposed.len(),
        received.metrics.len()
    );
    let node_families = [
        "reapwatch_node_tasks",
        "reapwatch_node_pid_max",
        "reapwatch_node_threads_max",
        "reapwatch_node_zombies",
        "reapwatch_build_info",
    ];
    let checked = assert_arrived_exactly(instance, &exposed, &received, |s| {
        node_families.contains(&s.family.as_str())
            || s.labels
                .iter()
                .any(|(k, v)| (k == "cgroup" && *v == path) || (k == "pid" && *v == parent))
    });
    // The node's five; the leak's cgroup: zombies, oldest, created, reaped, forks, exits;
    // its parent.
    assert!(checked >= 12, "only {checked} series checked");
    assert_clean(&received);

    // The bound is the exporter's: what the node serves whatever it runs fits in what the
    // limit leaves beside the flags' series (the node's forecast is absent when nothing grows).
    let flag = |name: &str| -> f64 {
        install
            .args
            .iter()
            .find_map(|a| a.strip_prefix(name)?.parse().ok())
            .unwrap_or_else(|| panic!("no {name}N"))
    };
    let node_bound = limit - 10.0 * flag("--top-cgroups=") - 2.0 * flag("--top-parents=");
    let node_level = exposed
        .iter()
        .filter(|s| !s.labels.iter().any(|(k, _)| k == "cgroup" || k == "pid"))
        .count() as f64;
    assert!(
        node_level <= node_bound,
        "{node_level} series per node, the chart's bound says {node_bound}"
    );
    assert_eq!(proc_unreaped_children(leak.parent).len(), 5);
    assert_eq!(
        received.value("reapwatch.parent_zombies", &[("pid", &parent)]),
        5.0
    );
    assert_eq!(
        received.value("reapwatch.zombies", &[("cgroup", &path)]),
        5.0
    );
    assert_eq!(
        received.value("reapwatch.node_pid_max", &[]),
        proc_number("/proc/sys/kernel/pid_max")
    );
    assert_eq!(
        received.value("reapwatch.node_threads_max", &[]),
        proc_number("/proc/sys/kernel/threads-max")
    );
    drop(busy);
}

#[test]
fn the_agent_scrapes_over_tls_with_the_ca_it_mounts() {
    let install = Install::render("everything");
    let certificate = install
        .resources
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["spec"]["isCA"] != true)
        .expect("the serving Certificate");
    let server_name = certificate["spec"]["dnsNames"][0]
        .as_str()
        .expect("a DNS name");
    // The certificate names the Service, as cert-manager's does, not the pod's address the
    // Agent connects to.
    let pki = Pki::new("datadog", &format!("DNS:{server_name}"));
    let web_config = pki.dir.join("web.yml");
    fs::write(
        &web_config,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
    )
    .expect("web config");
    let daemon = serve(
        &install,
        &[("--web-config-file", &web_config.display().to_string())],
    );
    let rendered = install.instance();
    assert!(
        rendered["tls_verify"] != false && rendered["tls_validate_hostname"] != false,
        "the annotation must verify the certificate: {rendered}"
    );
    let ca = pki.path("ca.crt");
    let checks = install.resolved(daemon.port, &[("tls_ca_cert", json!(ca))]);
    assert!(
        checks["openmetrics"]["instances"][0]["openmetrics_endpoint"]
            .as_str()
            .is_some_and(|e| e.starts_with("https://"))
    );
    let received = run_check(&checks);
    assert_clean(&received);
    assert_eq!(
        received.value("reapwatch.node_pid_max", &[]),
        proc_number("/proc/sys/kernel/pid_max")
    );

    // Another CA, or another name than the certificate's: refused, the check verifies both.
    let other = Pki::new("datadog-other", &format!("DNS:{server_name}"));
    let elsewhere = json!({ "Host": format!("elsewhere.{server_name}") });
    for (wrong, why) in [
        (
            ("tls_ca_cert", json!(other.path("ca.crt"))),
            "CERTIFICATE_VERIFY_FAILED",
        ),
        (("extra_headers", elsewhere), "doesn't match"),
    ] {
        let refused =
            run_check(&install.resolved(daemon.port, &[("tls_ca_cert", json!(ca)), wrong]));
        assert!(
            refused.metrics.is_empty() && refused.error.as_deref().is_some_and(|e| e.contains(why)),
            "{refused:?}"
        );
    }
}
