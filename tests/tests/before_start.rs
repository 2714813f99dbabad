//! What was there before the command started: zombies whose exit the programs never saw,
//! and waits nobody watched.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use reapwatch_tests::{
    found_age_source, parent_entry, proc_unreaped_children, reapwatch_json, workspace_binary,
    Helper, TestCgroup,
};

/// A zombie made before the command started has its real age, from the scheduler, in
/// `snapshot` (eBPF) and `scan` (`/proc` alone) alike.
#[test]
fn zombies_older_than_the_command_have_their_real_age() {
    let cgroup = TestCgroup::new("old-zombie");
    let made = Instant::now();
    let helper = Helper::start("leak", 1, &cgroup);
    std::thread::sleep(Duration::from_secs(3));
    for command in [&["snapshot", "--json"][..], &["scan", "--json"]] {
        let report = reapwatch_json(command);
        let elapsed = made.elapsed().as_secs_f64();
        let parent = parent_entry(&report, helper.parent);
        let child = &parent["children"][0];
        // Kernels without scheduler debug info cannot tell: nothing to check there.
        if found_age_source() != "scheduler" {
            return;
        }
        assert_eq!(child["age_source"], "scheduler", "{command:?}: {child}");
        assert_eq!(child["age_is_lower_bound"], false);
        assert_eq!(parent["oldest_age_source"], "scheduler");
        let age = child["age_seconds"].as_f64().unwrap();
        // Made within `elapsed`, at least 3 s before the command; the scheduler clock is
        // per CPU, within a tick or two of another CPU's.
        assert!(
            (2.9..=elapsed + 0.1).contains(&age),
            "{command:?}: age {age}, made {elapsed} s ago"
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
