//! The `reapwatch` binary as a person or a script runs it.

use std::{
    process::{Command, Output},
    time::Instant,
};

use reapwatch_tests::{
    found_age_source, parent_entry, proc_unreaped_children, workspace_binary, Helper, TestCgroup,
};
use serde_json::Value;

fn reapwatch(args: &[&str]) -> Output {
    Command::new(workspace_binary("reapwatch"))
        .args(args)
        .output()
        .expect("run reapwatch")
}

/// Bad input: a non-zero exit and exactly one line on stderr, no panic, no backtrace.
fn assert_one_line_error(output: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr:?}");
    assert!(stderr.starts_with("reapwatch: "), "stderr: {stderr:?}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
    assert!(output.stdout.is_empty());
}

#[test]
fn snapshot_json_matches_proc() {
    let cgroup = TestCgroup::new("cli-leak");
    let started = Instant::now();
    let helper = Helper::start("leak", 3, &cgroup);
    let truth = proc_unreaped_children(helper.parent);
    assert_eq!(truth.len(), 3);

    let output = reapwatch(&["snapshot", "--json"]);
    // Made after `started`: no age is older than that, however it is dated.
    let took = started.elapsed().as_secs_f64();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    let parent = parent_entry(&report, helper.parent);
    assert_eq!(parent["unreaped"], 3);
    assert_eq!(parent["comm"], "zombie-helper");
    assert_eq!(parent["cgroup"], cgroup.host_path());
    // They exited before reapwatch started: their ages come from the scheduler, where it
    // tells, else are lower bounds.
    assert_eq!(parent["oldest_age_source"], found_age_source());
    assert_eq!(
        parent["oldest_age_is_lower_bound"],
        found_age_source() == "first_seen"
    );
    let children = parent["children"].as_array().unwrap();
    let mut pids: Vec<u64> = children
        .iter()
        .map(|c| c["pid"].as_u64().unwrap())
        .collect();
    pids.sort();
    assert_eq!(pids, truth.keys().map(|&p| p as u64).collect::<Vec<_>>());
    for child in children {
        assert_eq!(child["comm"], "zombie-helper");
        assert_eq!(child["exit_code"], 7);
        assert_eq!(child["signal"], Value::Null);
        assert_eq!(child["exit_signal"], 17);
        let age = child["age_seconds"].as_f64().unwrap();
        // The scheduler's clock is per CPU: within a tick of another CPU's.
        assert!(
            (0.0..=took + 0.01).contains(&age),
            "{age} after a {took}s run"
        );
    }
    // The oldest is the first child's: children come oldest first.
    assert_eq!(parent["oldest_age_seconds"], children[0]["age_seconds"]);
    assert!(children
        .windows(2)
        .all(|w| w[0]["age_seconds"].as_f64() >= w[1]["age_seconds"].as_f64()));
    let hooks = report["tracer"]["hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 4);
    assert!(hooks
        .iter()
        .all(|h| h["attach"].as_str().unwrap().starts_with("tp_btf/")));
    assert!(report["tracer"]["repairs"]["added"].as_u64().unwrap() >= 3);
}

#[test]
fn snapshot_table_lists_the_parent() {
    let cgroup = TestCgroup::new("cli-table");
    let helper = Helper::start("leak", 2, &cgroup);
    let output = reapwatch(&["snapshot"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let header = text.lines().next().unwrap();
    for column in [
        "PID",
        "COMM",
        "UNREAPED",
        "OLDEST",
        "LAST WAIT",
        "CGROUP",
        "CHILDREN",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&helper.parent.to_string()))
        .unwrap_or_else(|| panic!("no row for {} in\n{text}", helper.parent));
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(fields[1], "zombie-helper");
    assert_eq!(fields[2], "2");
    // Dated by the scheduler, or a lower bound where it cannot tell.
    assert_eq!(
        fields[3].starts_with(">="),
        found_age_source() == "first_seen",
        "{row}"
    );
    assert!(text.lines().last().unwrap().starts_with("tracer: 4 hooks"));
}

#[test]
fn hostile_process_names_are_escaped() {
    let cgroup = TestCgroup::new("cli-comm");
    let helper = Helper::start("hostile-comm", 1, &cgroup);
    let json = reapwatch(&["snapshot", "--json"]);
    let report: Value = serde_json::from_slice(&json.stdout).expect("valid JSON despite the name");
    let parent = parent_entry(&report, helper.parent);
    assert_eq!(parent["children"][0]["comm"], "a\"b\nc{}\u{1b}[2J");

    assert_eq!(parent["comm"], "a\"b\nc{}\u{1b}[2J");

    let table = reapwatch(&["snapshot"]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(!text.contains('\u{1b}'), "raw escape reached the terminal");
    let row = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&helper.parent.to_string()))
        .expect("one row for the parent");
    assert!(row.contains(r#"a"b\nc{}\x1b[2J"#), "{row}");
    assert!(
        text.lines().all(|l| !l.starts_with("c{}")),
        "a row was split"
    );
}

#[test]
fn unprivileged_user_gets_one_line() {
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(workspace_binary("reapwatch"))
        .arg("snapshot")
        .output()
        .expect("setpriv (util-linux)");
    assert_one_line_error(
        &output,
        1,
        "must run as root or with CAP_BPF and CAP_PERFMON",
    );
}

#[test]
fn unknown_flag_gets_one_line() {
    assert_one_line_error(&reapwatch(&["snapshot", "--bogus"]), 2, "--bogus");
}

#[test]
fn unknown_command_gets_one_line() {
    assert_one_line_error(&reapwatch(&["frobnicate"]), 2, "frobnicate");
}

#[test]
fn missing_command_gets_one_line() {
    assert_one_line_error(&reapwatch(&[]), 2, "a command is required");
}

#[test]
fn invalid_map_size_gets_one_line() {
    assert_one_line_error(
        &reapwatch(&["snapshot", "--max-zombies", "0"]),
        2,
        "--max-zombies",
    );
    assert_one_line_error(
        &reapwatch(&["snapshot", "--max-zombies", "lots"]),
        2,
        "lots",
    );
}
