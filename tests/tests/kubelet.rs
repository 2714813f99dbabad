//! The kubelet's PID eviction, read where a kubelet keeps it and forecast against a real leak:
//! a process named `kubelet` in the host's PID namespace whose command line names its config
//! file, as on a node, and a pod-shaped cgroup whose parents leak zombies.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    time::{Duration, Instant},
};

use reapwatch_tests::{
    eventually, reapwatch_json, sample_value, workspace_binary, Daemon, Helper, TestCgroup,
};
use serde_json::Value;

const POD_UID: &str = "5c0ffee0-1234-4abc-8def-0123456789ab";
const CONTAINER_ID: &str = "9e1f0c2d3b4a5968778695a4b3c2d1e0f9e8d7c6b5a4938271605f4e3d2c1b0a";

/// A process the tracer takes for the kubelet: a shell named `kubelet`, its command line
/// carrying the kubelet's flags, beside its configuration files.
struct KubeletProcess {
    child: Option<Child>,
    dir: PathBuf,
}

impl KubeletProcess {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "reapwatch-test-kubelet-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self { child: None, dir }
    }

    /// Writes a configuration file beside it; returns its path.
    fn config(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    fn start(mut self, flags: &[String]) -> Self {
        let binary = self.dir.join("kubelet");
        fs::copy("/bin/sh", &binary).unwrap();
        let child = Command::new(&binary)
            .args(["-c", "sleep 600; :", "kubelet"])
            .args(flags)
            .spawn()
            .expect("start the stand-in kubelet");
        self.child = Some(child);
        self
    }
}

impl Drop for KubeletProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn number(path: impl AsRef<Path>) -> u64 {
    fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

fn node_tasks() -> u64 {
    let loadavg = fs::read_to_string("/proc/loadavg").unwrap();
    loadavg
        .split_whitespace()
        .nth(3)
        .unwrap()
        .split_once('/')
        .unwrap()
        .1
        .parse()
        .unwrap()
}

fn capacity() -> u64 {
    number("/proc/sys/kernel/pid_max").min(number("/proc/sys/kernel/threads-max"))
}

fn run(args: &[&str]) -> Output {
    Command::new(workspace_binary("reapwatch"))
        .args(args)
        .output()
        .expect("run reapwatch")
}

/// Lines of `cgroup.procs` in `dir` and below: what the kubelet ranks a pod by.
fn processes_below(dir: &Path) -> u64 {
    let mut count = fs::read_to_string(dir.join("cgroup.procs"))
        .map_or(0, |p| p.lines().filter(|l| !l.is_empty()).count() as u64);
    for entry in fs::read_dir(dir).unwrap().flatten() {
        if entry.file_type().unwrap().is_dir() {
            count += processes_below(&entry.path());
        }
    }
    count
}

/// One test, its parts in turn: a stand-in kubelet is node-wide, two at once would be
/// ambiguous.
#[test]
fn the_kubelets_thresholds_are_read_and_its_pressure_forecast_against_a_real_leak() {
    threshold_set_and_a_leak();
    a_missing_config_is_unknown_not_unset();
}

fn threshold_set_and_a_leak() {
    // A hard threshold 20 000 PIDs short of where the node is now: a leak of about 100 tasks a
    // second reaches it in minutes. A soft one as a percentage.
    let hard = capacity() - node_tasks() - 20_000;
    let kubelet = KubeletProcess::new("set");
    let config = kubelet.config(
        "config.yaml",
        &format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             evictionHard:\n  memory.available: 100Mi\n  pid.available: \"{hard}\"\n\
             evictionSoft:\n  pid.available: \"1%\"\nnotAField: [ignored]\n"
        ),
    );
    let _kubelet = kubelet.start(&[format!("--config={config}")]);
    let soft = (capacity() as f64 * 0.01).round() as u64;

    let root = TestCgroup::new("kubelet-pod");
    let pod = root.nested(&format!("kubepods/burstable/pod{POD_UID}"));
    let container = pod.nested(CONTAINER_ID);
    let daemon = Daemon::start(&["--eta-window", "10s"]);

    // The leak: a parent with 20 zombies every 200 ms, for 12 s.
    let started = Instant::now();
    let tasks_before = node_tasks();
    let mut helpers = Vec::new();
    while started.elapsed() < Duration::from_secs(12) {
        helpers.push(Helper::start("leak", 20, &container));
        std::thread::sleep(Duration::from_millis(200));
    }
    let rate = (node_tasks() as f64 - tasks_before as f64) / started.elapsed().as_secs_f64();
    assert!(
        rate > 20.0,
        "the leak did not show in /proc/loadavg: {rate} tasks/s"
    );

    let mut metrics = String::new();
    let forecast = eventually(Duration::from_secs(20), || {
        metrics = daemon.scrape();
        sample_value(&metrics, "reapwatch_kubelet_pid_pressure_eta_seconds", &[]).is_some()
    });
    assert!(
        forecast,
        "no PIDPressure forecast during a leak:\n{metrics}"
    );
    assert_eq!(
        sample_value(&metrics, "reapwatch_kubelet_eviction_known", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample_value(
            &metrics,
            "reapwatch_kubelet_pid_eviction_threshold",
            &[("kind", "hard")]
        ),
        Some(hard as f64)
    );
    assert_eq!(
        sample_value(
            &metrics,
            "reapwatch_kubelet_pid_eviction_threshold",
            &[("kind", "soft")]
        ),
        Some(soft as f64)
    );
    let available = sample_value(&metrics, "reapwatch_kubelet_pid_available", &[]).unwrap();
    let truth = (capacity() - node_tasks()) as f64;
    assert!(
        (available - truth).abs() < 500.0,
        "pid.available {available}, /proc says {truth}"
    );
    // The ETA: the headroom to the first threshold at the leak's rate, within a factor of 2
    // (the forecast's window and the node's other tasks blur it).
    let eta = sample_value(&metrics, "reapwatch_kubelet_pid_pressure_eta_seconds", &[]).unwrap();
    let expected = (available - hard.max(soft) as f64) / rate;
    assert!(
        eta > expected / 2.0 && eta < expected * 2.0,
        "ETA {eta} s, expected about {expected} s at {rate} tasks/s"
    );

    // scan: the kubelet's thresholds, and the pod ranked by its live processes beside the
    // PIDs it holds.
    let report = reapwatch_json(&["scan", "--json"]);
    assert_eq!(report["kubelet"]["found"], true, "{}", report["kubelet"]);
    assert_eq!(report["kubelet"]["known"], true);
    assert_eq!(report["kubelet"]["hard_threshold"], hard);
    assert_eq!(report["kubelet"]["soft_threshold"], soft);
    let pod_path = pod.host_path();
    let entry = report["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pod_cgroup"] == pod_path.as_str())
        .unwrap_or_else(|| panic!("pod {pod_path} not in {}", report["pods"]));
    let zombies = 20 * helpers.len() as u64;
    assert_eq!(entry["zombies"], zombies, "{entry}");
    let pod_dir = container.path.parent().unwrap();
    assert_eq!(entry["live_processes"], processes_below(pod_dir), "{entry}");
    assert_eq!(entry["live_processes"], helpers.len() as u64, "{entry}");
    let held = entry["pids_held"].as_u64().expect("pids.current");
    assert!(held >= zombies + helpers.len() as u64, "{entry}");
    assert_eq!(entry["pod_pids_limit"], Value::Null, "{entry}");

    let text = String::from_utf8(run(&["scan"]).stdout).unwrap();
    assert!(text.contains("kubelet: pid.available "), "{text}");
    assert!(
        text.contains(&format!("evicts pods under {hard} (hard) or {soft} (soft)")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "ranks this pod, after priority, by its {} live processes",
            helpers.len()
        )),
        "{text}"
    );
    assert!(text.contains("Set podPidsLimit (now unset)"), "{text}");

    // why: the same words for the pod of the parent asked about.
    let why =
        String::from_utf8(run(&["why", &helpers[0].parent.to_string(), "--watch", "0s"]).stdout)
            .unwrap();
    assert!(
        why.contains("the kubelet's PID eviction ranks this pod"),
        "{why}"
    );
    assert!(why.contains(&format!("({zombies} zombies)")), "{why}");
    drop(helpers);
}

fn a_missing_config_is_unknown_not_unset() {
    let _kubelet = KubeletProcess::new("missing")
        .start(&["--config=/nonexistent/reapwatch-test/kubelet-config.yaml".to_owned()]);
    let daemon = Daemon::start(&[]);
    let mut metrics = String::new();
    let read = eventually(Duration::from_secs(10), || {
        metrics = daemon.scrape();
        sample_value(&metrics, "reapwatch_kubelet_eviction_known", &[]) == Some(0.0)
    });
    assert!(read, "{metrics}");
    assert!(
        !metrics.contains("reapwatch_kubelet_pid_eviction_threshold"),
        "{metrics}"
    );
    assert!(sample_value(&metrics, "reapwatch_kubelet_pid_available", &[]).is_some());
    let report = reapwatch_json(&["scan", "--json"]);
    assert_eq!(report["kubelet"]["found"], true);
    assert_eq!(report["kubelet"]["known"], false);
    assert_eq!(report["kubelet"]["hard_threshold"], Value::Null);
}
