//! What was there before the command started: zombies whose exit the programs never saw,
//! and waits nobody watched.

use std::{
    fs,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use reapwatch_tests::{
    parent_entry, proc_unreaped_children, reapwatch_json, workspace_binary, wrapped, Helper,
    TestCgroup,
};

/// Ground truth: whether the kernel tells when `pid` last ran (for a zombie, when it exited):
/// `se.exec_start` in `/proc/<pid>/sched`, on kernels with scheduler debug info (every kernel
/// from 6.15 on).
fn kernel_tells_last_run(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/sched")).is_ok_and(|s| s.contains("se.exec_start"))
}

/// The one zombie of a `leak 1` helper as `reapwatch COMMAND` run under `wrapper` reports it:
/// its age and `age_source`, each checked against the parent's `oldest_*`.
fn reported_age(wrapper: &[&str], command: &[&str], helper: &Helper) -> (f64, String) {
    let output = wrapped(wrapper, &workspace_binary("reapwatch"))
        .args(command)
        .output()
        .unwrap();
    assert!(output.status.success(), "{command:?}: {output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let parent = parent_entry(&report, helper.parent);
    let child = &parent["children"][0];
    let source = child["age_source"].as_str().unwrap().to_owned();
    let age = child["age_seconds"].as_f64().unwrap();
    assert_eq!(parent["oldest_age_source"], source.as_str(), "{parent}");
    assert_eq!(parent["oldest_age_seconds"], age, "{parent}");
    assert_eq!(
        child["age_is_lower_bound"],
        source == "first_seen",
        "{command:?}: {child}"
    );
    (age, source)
}

const COMMANDS: [&[&str]; 2] = [&["snapshot", "--json"], &["scan", "--json"]];

/// A zombie made before the command started has its real age, from the scheduler, in
/// `snapshot` (eBPF) and `scan` (`/proc` alone) alike; where the kernel does not tell, a lower
/// bound that says so.
#[test]
fn zombies_older_than_the_command_have_their_real_age() {
    let cgroup = TestCgroup::new("old-zombie");
    let made = Instant::now();
    let helper = Helper::start("leak", 1, &cgroup);
    let zombie = *proc_unreaped_children(helper.parent).keys().next().unwrap();
    let from_scheduler = kernel_tells_last_run(zombie);
    std::thread::sleep(Duration::from_secs(3));
    for command in COMMANDS {
        let (age, source) = reported_age(&[], command, &helper);
        let elapsed = made.elapsed().as_secs_f64();
        if from_scheduler {
            assert_eq!(source, "scheduler", "{command:?}");
            // Made within `elapsed`, at least 3 s before the command; the scheduler clock is
            // per CPU, within a tick or two of another CPU's.
            assert!(
                (2.9..=elapsed + 0.1).contains(&age),
                "{command:?}: age {age}, made {elapsed} s ago"
            );
        } else {
            assert_eq!(source, "first_seen", "{command:?}");
            assert!((0.0..=elapsed).contains(&age), "{command:?}: age {age}");
        }
    }
}

/// Each CPU's scheduler clock is read on that CPU: a command kept off the CPU the zombie last
/// ran on (a cpuset, `taskset`) cannot tell when it exited, and says its age is a lower bound.
#[test]
fn a_command_kept_off_the_zombies_cpu_gives_a_lower_bound() {
    let online = fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let cpus: Vec<&str> = online.trim().split([',', '-']).collect();
    let (first, last) = (cpus[0], cpus[cpus.len() - 1]);
    assert_ne!(first, last, "needs two CPUs online");
    let cgroup = TestCgroup::new("old-zombie-cpu");
    let made = Instant::now();
    let helper = Helper::start_wrapped(&["taskset", "-c", first], "leak", 1, &[], &cgroup);
    std::thread::sleep(Duration::from_secs(1));
    for command in COMMANDS {
        let (age, source) = reported_age(&["taskset", "-c", last], command, &helper);
        let elapsed = made.elapsed().as_secs_f64();
        assert_eq!(source, "first_seen", "{command:?}");
        // First seen by the command: younger than the zombie.
        assert!(
            (0.0..elapsed - 0.9).contains(&age),
            "{command:?}: age {age}"
        );
    }
}

/// A snapshot watches `wait()` for a moment and `scan` not at all: neither may say a parent
/// never waits.
#[test]
fn a_short_watch_does_not_say_never() {
    let cgroup = TestCgroup::new("wait-unknown");
    let helper = Helper::start("leak", 1, &cgroup);
    for (command, watched) in [("snapshot", true), ("scan", false)] {
        let report = reapwatch_json(&[command, "--json"]);
        let parent = parent_entry(&report, helper.parent);
        assert_eq!(parent["last_wait_age_seconds"], serde_json::Value::Null);
        let watch = &parent["last_wait_watched_seconds"];
        if watched {
            assert!(
                watch.as_f64().is_some_and(|w| (0.0..10.0).contains(&w)),
                "{watch}"
            );
        } else {
            assert_eq!(watch, &serde_json::Value::Null);
        }

        let output = Command::new(workspace_binary("reapwatch"))
            .arg(command)
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&output.stdout);
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&helper.parent.to_string()))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(row.contains(" unknown "), "{command}: {row}");
        assert!(!row.contains("never"), "{command}: {row}");
    }
}

/// A reap of a zombie that predates `trace` is traced.
#[test]
fn trace_shows_reaps_of_zombies_older_than_the_trace() {
    let cgroup = TestCgroup::new("trace-old");
    let mut helper = Helper::start("leak", 2, &cgroup);
    let children: Vec<u64> = proc_unreaped_children(helper.parent)
        .keys()
        .map(|&pid| u64::from(pid))
        .collect();
    assert_eq!(children.len(), 2);
    let mut trace = Command::new(workspace_binary("reapwatch"))
        .args(["trace", "--json", "--duration", "5s", "--pid"])
        .arg(helper.parent.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Tracing once it says so on stderr.
    let mut stderr = BufReader::new(trace.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("tracing"), "{line}");
    helper.step();
    let output = trace.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut reaped: Vec<u64> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "reap")
        .map(|e| e["pid"].as_u64().unwrap())
        .collect();
    reaped.sort_unstable();
    assert_eq!(reaped, children, "{stdout}");
}

/// `why` counts the reaps of zombies that predate its watch: a parent that reaps them is
/// not one that "waits wrong".
#[test]
fn why_counts_reaps_of_zombies_older_than_the_watch() {
    let cgroup = TestCgroup::new("why-old");
    let mut helper = Helper::start("leak", 3, &cgroup);
    let mut why = Command::new(workspace_binary("reapwatch"))
        .args(["why", "--watch", "3s"])
        .arg(helper.parent.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Reaped in the middle of the watch, once it has started.
    let mut stderr = BufReader::new(why.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.starts_with("reapwatch: watching "), "{line}");
    std::thread::sleep(Duration::from_millis(500));
    helper.step();
    let output = why.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains(", 0 zombies created, 3 reaped"), "{text}");
    assert!(!text.contains("waits wrong"), "{text}");
}

/// `why` on a zombie explains it and diagnoses its parent.
#[test]
fn why_on_a_zombie_diagnoses_its_parent() {
    let cgroup = TestCgroup::new("why-zombie");
    let helper = Helper::start("leak", 2, &cgroup);
    let zombie = *proc_unreaped_children(helper.parent).keys().next().unwrap();
    let output = Command::new(workspace_binary("reapwatch"))
        .args(["why", "--watch", "0s"])
        .arg(zombie.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.starts_with(&format!(
            "process {zombie} (zombie-helper) is a zombie: it exited (exit 7) and its parent {} \
             has not reaped it.",
            helper.parent
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("process {} (zombie-helper), state", helper.parent)),
        "{text}"
    );
    assert!(text.contains("children: 2 unreaped"), "{text}");
    assert!(!text.contains("nothing to fix"), "{text}");
}
