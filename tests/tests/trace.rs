//! `reapwatch trace` against real workloads: every event of every child, checked.

use std::{
    collections::BTreeSet,
    io::Read,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use reapwatch_tests::{
    proc_unreaped_children, start_trace, workspace_binary, Helper, TestCgroup,
    DAEMONSET_CAPABILITIES, KERNEL_TICK_SECONDS,
};
use serde_json::Value;

/// Waits for the end of the trace: its JSON lines and its closing summary.
fn finish(mut child: Child) -> (Vec<Value>, String) {
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{err}");
    let events = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (events, err)
}

fn of<'a>(events: &'a [Value], kind: &str, pid: u32) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"] == kind && e["pid"] == pid)
        .collect()
}

#[test]
fn every_lifecycle_event_of_a_leak() {
    let cgroup = TestCgroup::new("trace-leak");
    let trace = start_trace(&[], &["--duration", "6s", "--cgroup", &cgroup.host_path()]);
    let started = Instant::now();
    let helper = Helper::start("leak", 2, &cgroup);
    let children: Vec<u32> = proc_unreaped_children(helper.parent).into_keys().collect();
    assert_eq!(children.len(), 2);
    let parent = helper.parent;
    // The helper exits: its zombies move to a new reaper, which reaps them.
    drop(helper);
    let (events, summary) = finish(trace);
    let elapsed = started.elapsed().as_secs_f64() + KERNEL_TICK_SECONDS;

    for event in &events {
        for field in ["time", "event", "pid", "ppid", "comm", "cgroup"] {
            assert!(!event[field].is_null(), "{field} missing in {event}");
        }
        assert_eq!(event["cgroup"], cgroup.host_path(), "{event}");
    }
    for &child in &children {
        let fork = of(&events, "fork", child);
        assert_eq!(fork.len(), 1, "fork of {child}: {events:#?}");
        assert_eq!(fork[0]["ppid"], parent);
        assert_eq!(fork[0]["comm"], "zombie-helper");
        for kind in ["exit", "zombie"] {
            let event = of(&events, kind, child);
            assert_eq!(event.len(), 1, "{kind} of {child}");
            assert_eq!(event[0]["exit_code"], 7, "{}", event[0]);
            assert_eq!(event[0]["ppid"], parent, "{}", event[0]);
        }
        let reap = of(&events, "reap", child);
        assert_eq!(reap.len(), 1, "one reap of {child}: {events:#?}");
        // Zombie from exit to reap: within the test's own run.
        let age = reap[0]["age_seconds"].as_f64().unwrap();
        assert!(age > 0.0 && age <= elapsed, "{age}, test ran {elapsed}s");
        assert_eq!(reap[0]["exit_code"], 7);
    }
    // waitid(WNOWAIT) is a wait that reaps nothing: the helper makes one per child.
    assert_eq!(
        of(&events, "wait", parent).len(),
        children.len(),
        "{events:#?}"
    );
    assert!(summary.contains(" 0 lost"), "{summary}");
}

/// Zombies that predate the trace are found in `/proc`, where the DaemonSet's capabilities do
/// not show full root's exit codes: their reaps still carry the code, read by the programs.
#[test]
fn reaps_of_zombies_found_under_the_daemonsets_capabilities_carry_their_code() {
    let cgroup = TestCgroup::new("trace-caps");
    let mut helper = Helper::start("leak", 2, &cgroup);
    let trace = start_trace(
        DAEMONSET_CAPABILITIES,
        &["--duration", "3s", "--pid", &helper.parent.to_string()],
    );
    std::thread::sleep(Duration::from_millis(500));
    let children: Vec<u32> = proc_unreaped_children(helper.parent).into_keys().collect();
    assert_eq!(children.len(), 2);
    // The helper reaps them.
    helper.step();
    let (events, _) = finish(trace);
    for child in children {
        let reap = of(&events, "reap", child);
        assert_eq!(reap.len(), 1, "one reap of {child}: {events:#?}");
        assert_eq!(reap[0]["exit_code"], 7, "{}", reap[0]);
    }
}

#[test]
fn keeps_up_with_a_fork_storm() {
    const ROUND_TRIPS: usize = 2000;
    let cgroup = TestCgroup::new("trace-storm");
    let trace = start_trace(
        &[],
        &[
            "--duration",
            "6s",
            "--cgroup",
            &cgroup.host_path(),
            "--zombies-only",
        ],
    );
    let helper = Helper::start("storm", ROUND_TRIPS as u32, &cgroup);
    let parent = helper.parent;
    let (events, summary) = finish(trace);
    assert!(summary.contains(" 0 lost"), "{summary}");
    let pids = |kind: &str| -> BTreeSet<u64> {
        events
            .iter()
            .filter(|e| e["event"] == kind && e["ppid"] == parent)
            .map(|e| e["pid"].as_u64().unwrap())
            .collect()
    };
    let (zombies, reaps) = (pids("zombie"), pids("reap"));
    assert_eq!(zombies.len(), ROUND_TRIPS);
    assert_eq!(reaps, zombies, "every zombie reaped, once");
    assert!(events
        .iter()
        .all(|e| e["event"] != "fork" && e["event"] != "wait"));
}

#[test]
fn bad_duration_is_one_line() {
    let output = Command::new(workspace_binary("reapwatch"))
        .args(["trace", "--duration", "forever"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// `--min-age`: zombies a parent reaps at once stay out; one that lingers is shown once it
/// has, with its age, and so is its reap.
#[test]
fn min_age_shows_only_lingering_zombies() {
    let cgroup = TestCgroup::new("trace-min-age");
    // Only this test's cgroup: other processes on the node may linger too.
    let path = cgroup.host_path();
    let trace = start_trace(
        &[],
        &[
            "--zombies-only",
            "--min-age",
            "1s",
            "--duration",
            "4s",
            "--cgroup",
            &path,
        ],
    );
    let storm = Helper::start("storm", 50, &cgroup);
    let mut leak = Helper::start("leak", 2, &cgroup);
    let lingering: BTreeSet<u32> = proc_unreaped_children(leak.parent).into_keys().collect();
    assert_eq!(lingering.len(), 2);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    leak.step();
    let (events, _) = finish(trace);
    let shown: BTreeSet<u32> = events
        .iter()
        .filter(|e| e["event"] == "zombie")
        .map(|e| e["pid"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(shown, lingering, "{events:?}");
    for pid in &lingering {
        let zombie = of(&events, "zombie", *pid);
        assert!(
            zombie[0]["age_seconds"].as_f64().unwrap() >= 1.0,
            "{zombie:?}"
        );
        assert_eq!(of(&events, "reap", *pid).len(), 1, "{events:?}");
    }
    assert!(
        !events.iter().any(|e| e["ppid"] == storm.parent),
        "the storm's zombies, reaped at once, were shown: {events:?}"
    );
}

/// The text form starts with its column titles; a trace with an end does not say Ctrl-C.
#[test]
fn text_has_a_header_and_a_timed_trace_says_how_long() {
    let output = Command::new(workspace_binary("reapwatch"))
        .args(["trace", "--duration", "1s", "--zombies-only"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let header: Vec<&str> = stdout
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "TIME",
            "EVENT",
            "PID",
            "PPID",
            "COMM",
            "CONTAINER",
            "DETAIL"
        ],
        "{stdout}"
    );
    assert!(
        stderr.starts_with("reapwatch: tracing for 1.0s\n"),
        "{stderr}"
    );
    assert!(!stderr.contains("Ctrl-C"), "{stderr}");
}

/// A reader that goes away (`reapwatch trace | head`) ends the trace, as it ends any filter,
/// instead of leaving it to trace into a closed pipe until Ctrl-C.
#[test]
fn a_reader_that_goes_away_ends_the_trace() {
    let mut child = Command::new(workspace_binary("reapwatch"))
        .arg("trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn reapwatch trace");
    drop(child.stdout.take());
    // Loading takes a few seconds; the header is written out at the first refresh after.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still tracing 30s after its reader went away");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
}
