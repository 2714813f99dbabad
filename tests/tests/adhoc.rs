//! `reapwatch scan` and `reapwatch why` against real workloads, checked against /proc.

use std::{
    fs,
    process::{Command, Output},
};

use reapwatch_tests::{
    found_age_source, parent_entry, proc_unreaped_children, workspace_binary, Helper, TestCgroup,
};
use serde_json::Value;

fn unprivileged(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(workspace_binary("reapwatch"))
        .args(args)
        .output()
        .expect("setpriv (util-linux)")
}

fn reapwatch(args: &[&str]) -> Output {
    Command::new(workspace_binary("reapwatch"))
        .args(args)
        .output()
        .expect("run reapwatch")
}

fn number(path: &str) -> u64 {
    fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

#[test]
fn scan_needs_no_privilege_and_matches_proc() {
    let cgroup = TestCgroup::new("scan");
    fs::write(cgroup.path.join("pids.max"), "100").unwrap();
    let helper = Helper::start("leak", 3, &cgroup);
    let truth = proc_unreaped_children(helper.parent);

    let output = unprivileged(&["scan", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let parent = parent_entry(&report, helper.parent);
    assert_eq!(parent["unreaped"], 3);
    assert_eq!(parent["comm"], "zombie-helper");
    assert_eq!(parent["cgroup"], cgroup.host_path());
    let mut pids: Vec<u64> = parent["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            // Another user's exit code is hidden by the kernel: unknown, not 0.
            assert_eq!(c["exit_code"], Value::Null);
            assert_eq!(c["exit_signal"], 17);
            assert_eq!(c["comm"], "zombie-helper");
            assert_eq!(c["age_source"], found_age_source());
            assert_eq!(c["age_is_lower_bound"], found_age_source() == "first_seen");
            c["pid"].as_u64().unwrap()
        })
        .collect();
    pids.sort();
    assert_eq!(pids, truth.keys().map(|&p| p as u64).collect::<Vec<_>>());

    // As root, the exit codes are there.
    let root: Value = serde_json::from_slice(&reapwatch(&["scan", "--json"]).stdout).unwrap();
    let parent = parent_entry(&root, helper.parent);
    assert!(parent["children"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["exit_code"] == 7));

    let node = &report["node"];
    assert_eq!(node["pid_max"], number("/proc/sys/kernel/pid_max"));
    assert_eq!(node["threads_max"], number("/proc/sys/kernel/threads-max"));
    // Others' tasks come and go: the helper and its 3 zombies are a floor, the limits a ceiling.
    let limit = number("/proc/sys/kernel/pid_max").min(number("/proc/sys/kernel/threads-max"));
    let tasks = node["tasks"].as_u64().unwrap();
    assert!((4..=limit).contains(&tasks), "{tasks}");
    let zombies = node["zombies"].as_u64().unwrap();
    assert!((3..tasks).contains(&zombies), "{zombies} of {tasks}");
    assert!(node["eta_seconds"].is_null());

    let row = report["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cgroup"] == cgroup.host_path())
        .expect("the helper's cgroup is listed");
    assert_eq!(row["zombies"], 3);
    assert_eq!(row["pids_max"], 100);
    // The helper and its 3 zombies count against pids.current.
    assert_eq!(row["pids_current"], 4);
}

#[test]
fn scan_watch_measures_growth() {
    let cgroup = TestCgroup::new("scan-watch");
    let mut helper = Helper::start("leader-exit", 1, &cgroup);
    let scan = Command::new(workspace_binary("reapwatch"))
        .args(["scan", "--json", "--watch", "3s", "--interval", "200ms"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    // One zombie appears during the watch.
    helper.step();
    let output = scan.wait_with_output().unwrap();
    assert!(output.status.success());
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let parent = parent_entry(&report, helper.parent);
    let growth = parent["growth_per_minute"].as_f64().unwrap();
    // One zombie over about 3 s: about 20 a minute.
    assert!((10.0..40.0).contains(&growth), "{growth}");
    assert!(report["node"]["tasks_growth_per_minute"].is_number());
}

fn why(pid: u32, watch: &str) -> String {
    let output = reapwatch(&["why", &pid.to_string(), "--watch", watch]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn why_names_the_pid_1_without_init_pattern() {
    let cgroup = TestCgroup::new("why-init");
    let helper = Helper::start("pidns-init", 3, &cgroup);
    let text = why(helper.parent, "1s");
    assert!(text.contains("children: 5 unreaped"), "{text}");
    assert!(
        text.contains("PID 1 in a container without an init"),
        "{text}"
    );
    assert!(
        text.contains("tini") && text.contains("shareProcessNamespace"),
        "{text}"
    );
    assert!(
        text.contains("pid namespaces:") && text.contains("-> 1 (NSpid)"),
        "{text}"
    );
    assert!(text.contains("did not call wait() once"), "{text}");
}

#[test]
fn why_tells_waiting_wrong_from_never_waiting() {
    let cgroup = TestCgroup::new("why-wrong");
    let helper = Helper::start("wait-wrong", 2, &cgroup);
    let text = why(helper.parent, "1s");
    assert!(text.contains("children: 2 unreaped"), "{text}");
    assert!(text.contains("reaped nothing: it waits wrong"), "{text}");
    assert!(!text.contains("did not call wait() once"), "{text}");
}

#[test]
fn why_explains_non_sigchld_exit_signals() {
    let cgroup = TestCgroup::new("why-signal");
    let helper = Helper::start("exit-signal", 2, &cgroup);
    let text = why(helper.parent, "0s");
    assert!(
        text.contains("2 children exit with signal 0 instead of SIGCHLD"),
        "{text}"
    );
    assert!(text.contains("__WALL"), "{text}");
    assert!(text.contains("not watched (--watch 0s)"), "{text}");
}

#[test]
fn why_of_a_missing_process_is_one_line() {
    let output = reapwatch(&["why", "4194303", "--watch", "0s"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr.trim(), "reapwatch: no process 4194303");
}

/// `scan --watch` forecasts when a cgroup reaches its pids.max from how fast it grows, in the
/// hierarchy that holds the pids controller (v1 `pids`, or the unified one on pure v2).
#[test]
fn scan_watch_forecasts_when_a_cgroup_reaches_pids_max() {
    let cgroup = TestCgroup::new("pids-eta");
    fs::write(cgroup.path.join("pids.max"), "100").unwrap();
    let scan = Command::new(workspace_binary("reapwatch"))
        .args(["scan", "--json", "--watch", "4s", "--interval", "200ms"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // 4 parents with 2 zombies each arrive over about 2 s of the watch: 12 tasks.
    let helpers: Vec<Helper> = (0..4)
        .map(|_| {
            let helper = Helper::start("leak", 2, &cgroup);
            std::thread::sleep(std::time::Duration::from_millis(500));
            helper
        })
        .collect();
    let output = scan.wait_with_output().unwrap();
    assert!(output.status.success());
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let row = report["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cgroup"] == cgroup.host_path())
        .expect("the cgroup is listed");
    assert_eq!(row["pids_max"], 100, "{row}");
    assert_eq!(row["pids_current"], 12, "{row}");
    assert_eq!(row["zombies"], 8, "{row}");
    // 88 tasks of headroom at about 3 a second (12 over the 4 s watch) or faster: about
    // 30 s or less; a slope fitted to samples taken while it grew gives no less than a second.
    let eta = row["pids_eta_seconds"].as_f64();
    assert!(eta.is_some_and(|s| (1.0..=60.0).contains(&s)), "{row}");
    drop(helpers);
}
