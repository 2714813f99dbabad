//! The pids limit that stops a pod: Kubernetes sets `podPidsLimit` as the `pids.max` of the
//! pod's cgroup, which holds no process; its containers' own `pids.max` are `max` (or looser).
//! The leak's series must carry the limit that binds it, once, named by its cgroup.

use std::{
    fs,
    process::Command,
    time::{Duration, Instant},
};

use reapwatch_tests::{
    eventually, reapwatch_json, sample_value, workspace_binary, Daemon, FakeKubelet, Helper,
    TestCgroup,
};
use serde_json::Value;

const UID: &str = "5c0ffee0-1234-4abc-8def-0123456789ab";
const CTR_A: &str = "aaaa1111bbbb2222cccc3333dddd4444eeee5555ffff6666aaaa7777bbbb8888";
const CTR_B: &str = "bbbb1111cccc2222dddd3333eeee4444ffff5555aaaa6666bbbb7777cccc8888";

/// `value` of the series of `name` with `labels`, and its `limit_cgroup` label.
fn limit(text: &str, name: &str, labels: &[(&str, &str)], limit_cgroup: &str) -> Option<f64> {
    let mut wanted = labels.to_vec();
    wanted.push(("limit_cgroup", limit_cgroup));
    sample_value(text, name, &wanted)
}

/// Two containers of a pod whose own pids.max (40 each) is looser than the pod's (10): each
/// container's series carries the pod's limit; merged into one series per pod
/// (`--label-allow-list namespace,pod`), the pod's limit appears once, not summed.
#[test]
fn the_pods_limit_binds_its_containers_once() {
    let kubelet = FakeKubelet::new("bars", "bars-pod", UID, "ctr", CTR_A);
    let base = TestCgroup::new("k8s-limit");
    let pod = base.nested(&format!("kubepods/burstable/pod{UID}"));
    let a = pod.nested(CTR_A);
    let b = pod.nested(CTR_B);
    fs::write(pod.path.join("pids.max"), "10").unwrap();
    for ctr in [&a, &b] {
        fs::write(ctr.path.join("pids.max"), "40").unwrap();
    }
    let _leak_a = Helper::start("leak", 3, &a);
    let _leak_b = Helper::start("leak", 2, &b);
    let pod_path = pod.host_path();
    // 4 + 3 tasks of the pod's 10; each container has 36 and 37 left of its own 40.
    let per_container = Daemon::start(&["--pod-logs-dir", &kubelet.pods_dir()]);
    let merged = Daemon::start(&[
        "--pod-logs-dir",
        &kubelet.pods_dir(),
        "--label-allow-list",
        "namespace,pod",
    ]);
    let pod_labels = [("namespace", "bars"), ("pod", "bars-pod")];
    let mut text = String::new();
    let seen = eventually(Duration::from_secs(10), || {
        text = merged.scrape();
        limit(&text, "reapwatch_cgroup_pids_max", &pod_labels, &pod_path) == Some(10.0)
    });
    assert!(seen, "the pod's limit, once:\n{text}");
    assert_eq!(
        limit(
            &text,
            "reapwatch_cgroup_pids_current",
            &pod_labels,
            &pod_path
        ),
        Some(7.0),
        "{text}"
    );
    // One series per pod: no other limit beside it.
    let pod_series = text
        .lines()
        .filter(|l| l.starts_with("reapwatch_cgroup_pids_max{") && l.contains("pod=\"bars-pod\""))
        .count();
    assert_eq!(pod_series, 1, "{text}");

    for ctr in [&a, &b] {
        let path = ctr.host_path();
        let labels = [("cgroup", path.as_str())];
        let seen = eventually(Duration::from_secs(10), || {
            text = per_container.scrape();
            limit(&text, "reapwatch_cgroup_pids_max", &labels, &pod_path) == Some(10.0)
        });
        assert!(seen, "{path} carries the pod's limit:\n{text}");
        assert_eq!(
            limit(&text, "reapwatch_cgroup_pids_current", &labels, &pod_path),
            Some(7.0)
        );
    }
}

/// The leak: 2 zombies a second in `bars-pod/ctr`, the pod at `pids.max` 50, the
/// container's own `max`. Within the forecast window its series has the pod's limit and an
/// exhaustion ETA from the pod's own pids.current trend.
#[test]
fn a_leak_under_the_pods_limit_gets_an_eta() {
    let base = TestCgroup::new("bars");
    let pod = base.nested("bars-pod");
    let ctr = pod.nested("ctr");
    fs::write(pod.path.join("pids.max"), "50").unwrap();
    let daemon = Daemon::start(&["--eta-window", "6s"]);
    let pod_path = pod.host_path();
    let path = ctr.host_path();
    let labels = [("cgroup", path.as_str())];
    let started = Instant::now();
    let mut helpers = Vec::new();
    let mut text = String::new();
    let mut eta = None;
    // A helper and its 2 zombies every second: 3 tasks a second, 12 s of headroom at most.
    while started.elapsed() < Duration::from_secs(12) && eta.is_none() {
        helpers.push(Helper::start("leak", 2, &ctr));
        std::thread::sleep(Duration::from_millis(1000));
        text = daemon.scrape();
        eta = limit(
            &text,
            "reapwatch_cgroup_pids_exhaustion_eta_seconds",
            &labels,
            &pod_path,
        );
    }
    assert_eq!(
        limit(&text, "reapwatch_cgroup_pids_max", &labels, &pod_path),
        Some(50.0),
        "{text}"
    );
    let current = fs::read_to_string(pod.path.join("pids.current")).unwrap();
    let left = 50.0 - current.trim().parse::<f64>().unwrap();
    // About `left` / 3 seconds; a trend fitted while it grew gives no less than a second.
    let eta = eta.unwrap_or_else(|| panic!("no ETA after {:?}:\n{text}", started.elapsed()));
    assert!(
        (1.0..=4.0 * left / 3.0 + 5.0).contains(&eta),
        "{eta} s, {left} left"
    );
}

/// `scan`, `why` and `top` name the limit that binds a leak under a pod's limit, and the
/// cgroup that sets it.
#[test]
fn scan_why_and_top_name_the_binding_limit() {
    let base = TestCgroup::new("bars-cli");
    let pod = base.nested("bars-pod");
    let ctr = pod.nested("ctr");
    fs::write(pod.path.join("pids.max"), "50").unwrap();
    let helper = Helper::start("leak", 3, &ctr);
    let (pod_path, path) = (pod.host_path(), ctr.host_path());

    let report = reapwatch_json(&["scan", "--json"]);
    let row = report["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cgroup"] == path.as_str())
        .unwrap_or_else(|| panic!("{path} not in {report}"));
    // Its own pids.max is `max`; the pod's binds it: the helper and its 3 zombies.
    assert_eq!(row["pids_max"], Value::Null, "{row}");
    let limit = &row["pids_limit"];
    assert_eq!(limit["cgroup"], pod_path.as_str(), "{row}");
    assert_eq!((&limit["current"], &limit["max"]), (&4.into(), &50.into()));
    assert_eq!(limit["full"], false);
    let table = String::from_utf8(
        Command::new(workspace_binary("reapwatch"))
            .arg("scan")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let line = table
        .lines()
        .find(|l| l.contains(&format!("{path} (limited by {pod_path})")))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(line.contains(" 4/50 "), "{line}");

    let why = Command::new(workspace_binary("reapwatch"))
        .args(["why", &helper.parent.to_string(), "--watch", "0s"])
        .output()
        .unwrap();
    let why = String::from_utf8(why.stdout).unwrap();
    assert!(
        why.contains(&format!(
            "pids limit: 4/50 tasks (pids.max of {pod_path}), 46 left"
        )),
        "{why}"
    );

    let top = Command::new(workspace_binary("reapwatch"))
        .args(["top", "--iterations", "1"])
        .output()
        .unwrap();
    let top = String::from_utf8(top.stdout).unwrap();
    assert!(
        top.contains(&format!("4/50 of {pod_path} (46 left)")),
        "{top}"
    );
}

/// The kernel's own local count of refused forks in `cgroup`: `pids.events.local` where the
/// kernel has one (v2 from 6.14), else `pids.events`.
fn local_refusals(cgroup: &TestCgroup) -> u64 {
    let events = fs::read_to_string(cgroup.path.join("pids.events.local"))
        .or_else(|_| fs::read_to_string(cgroup.path.join("pids.events")))
        .unwrap();
    events
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{events}"))
}

/// Forks refused by a pod's limit are counted where the kernel counts them: in the forking
/// container's cgroup on v1 and on v2 before 6.14, in the pod's on v2 from 6.14 (whose
/// pids.events is hierarchical). Each cgroup's series has its own count, the pod's included
/// though it holds no process, so a series merged per pod counts each refusal once.
#[test]
fn forks_refused_by_the_pods_limit_are_counted_once_where_the_kernel_counts_them() {
    const UID2: &str = "0ddba11e-1234-4abc-8def-0123456789ab";
    let kubelet = FakeKubelet::new("bars", "full-pod", UID2, "ctr", CTR_A);
    let base = TestCgroup::new("k8s-refused");
    let pod = base.nested(&format!("kubepods/burstable/pod{UID2}"));
    let ctr = pod.nested(CTR_A);
    let helper = Helper::start("leak", 1, &ctr);
    // The helper and its zombie fill the pod.
    fs::write(pod.path.join("pids.max"), "2").unwrap();
    let script = format!(
        "echo $$ > {}/cgroup.procs && {} --version > /dev/null && exit 0",
        ctr.path.display(),
        workspace_binary("reapwatch").display()
    );
    for _ in 0..3 {
        let status = Command::new("/bin/sh")
            .args(["-c", &script])
            .status()
            .unwrap();
        assert!(!status.success(), "a fork at the pod's pids.max succeeded");
    }
    let (in_pod, in_ctr) = (local_refusals(&pod), local_refusals(&ctr));
    assert!(in_pod + in_ctr >= 3, "pod {in_pod}, container {in_ctr}");

    let per_cgroup = Daemon::start(&["--pod-logs-dir", &kubelet.pods_dir()]);
    let merged = Daemon::start(&[
        "--pod-logs-dir",
        &kubelet.pods_dir(),
        "--label-allow-list",
        "namespace,pod",
    ]);
    let refused = "reapwatch_cgroup_pids_fork_failures_total";
    let (pod_path, ctr_path) = (pod.host_path(), ctr.host_path());
    let mut text = String::new();
    let counted = eventually(Duration::from_secs(20), || {
        text = per_cgroup.scrape();
        sample_value(&text, refused, &[("cgroup", &pod_path)]) == Some(in_pod as f64)
            && sample_value(&text, refused, &[("cgroup", &ctr_path)]) == Some(in_ctr as f64)
    });
    assert!(counted, "pod {in_pod}, container {in_ctr}:\n{text}");
    let pod_labels = [("namespace", "bars"), ("pod", "full-pod")];
    let counted = eventually(Duration::from_secs(20), || {
        text = merged.scrape();
        sample_value(&text, refused, &pod_labels) == Some((in_pod + in_ctr) as f64)
    });
    assert!(counted, "once per pod: {}:\n{text}", in_pod + in_ctr);
    drop(helper);
}
