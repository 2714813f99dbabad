//! Names a tenant controls are hostile bytes: a cgroup named with an invalid UTF-8 byte, a
//! process named with bidi overrides and zero-width characters, kubelet log directories named
//! likewise. Every command must still count, and show it all visibly.

use std::{
    ffi::OsStr,
    fs,
    os::unix::ffi::OsStrExt,
    process::{Command, Output},
    time::Duration,
};

use reapwatch_tests::{
    eventually, parent_entry, proc_unreaped_children, reapwatch_json, sample_value,
    workspace_binary, Daemon, FakeKubelet, Helper, TestCgroup,
};

const CONTAINER_ID: &str = "9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b";

/// A directory name that is not UTF-8: anyone with a delegated cgroup subtree can make one.
fn bad_name() -> &'static OsStr {
    OsStr::from_bytes(b"bad\xffname")
}

fn reapwatch(args: &[&str]) -> Output {
    Command::new(workspace_binary("reapwatch"))
        .args(args)
        .output()
        .expect("run reapwatch")
}

/// Bidi controls and invisible format characters that must never reach a terminal raw.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}'
        | '\u{061c}' | '\u{feff}')
}

#[test]
fn snapshot_counts_a_leak_in_a_non_utf8_cgroup() {
    let cgroup = TestCgroup::with_raw_name(bad_name());
    let helper = Helper::start("leak", 3, &cgroup);
    assert_eq!(proc_unreaped_children(helper.parent).len(), 3);
    let lossy = cgroup.host_path();
    assert!(lossy.contains("bad\u{fffd}name"), "{lossy}");

    let report = reapwatch_json(&["snapshot", "--json"]);
    let parent = parent_entry(&report, helper.parent);
    assert_eq!(parent["unreaped"], 3);
    assert_eq!(parent["children"].as_array().unwrap().len(), 3);
    assert_eq!(parent["cgroup"], lossy.as_str());

    let table = reapwatch(&["snapshot"]);
    assert!(
        table.status.success(),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
    let text = String::from_utf8(table.stdout).expect("terminal output is UTF-8");
    let row = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&helper.parent.to_string()))
        .expect("one row for the parent");
    assert!(row.contains("bad\u{fffd}name"), "{row}");
}

#[test]
fn scan_counts_a_leak_in_a_non_utf8_cgroup() {
    let cgroup = TestCgroup::with_raw_name(bad_name());
    fs::write(cgroup.path.join("pids.max"), "100").unwrap();
    let helper = Helper::start("leak", 3, &cgroup);
    assert_eq!(proc_unreaped_children(helper.parent).len(), 3);
    let lossy = cgroup.host_path();

    let report = reapwatch_json(&["scan", "--json"]);
    assert_eq!(
        parent_entry(&report, helper.parent)["cgroup"],
        lossy.as_str()
    );
    let entry = report["cgroups"]
        .as_array()
        .expect("a cgroups array")
        .iter()
        .find(|c| c["cgroup"] == lossy.as_str())
        .unwrap_or_else(|| panic!("{lossy:?} not in {}", report["cgroups"]));
    assert_eq!(entry["zombies"], 3, "{entry}");
    // Read from the raw directory: the parent and its 3 zombies.
    assert_eq!(entry["pids_max"], 100, "{entry}");
    assert_eq!(entry["pids_current"], 4, "{entry}");
}

#[test]
fn serve_labels_a_non_utf8_cgroup_lossily() {
    let cgroup = TestCgroup::with_raw_name(bad_name());
    // A pids.max makes the exporter read the cgroup's pids.* files: from the raw directory.
    fs::write(cgroup.path.join("pids.max"), "100").unwrap();
    let daemon = Daemon::start(&[]);
    let helper = Helper::start("leak", 3, &cgroup);
    assert_eq!(proc_unreaped_children(helper.parent).len(), 3);
    let lossy = cgroup.host_path();
    let labels = [("cgroup", lossy.as_str())];

    let mut last = (0, String::new());
    let seen = eventually(Duration::from_secs(15), || {
        last = daemon.get("/metrics").unwrap_or((0, "no answer".into()));
        last.0 == 200
            && sample_value(&last.1, "reapwatch_zombies", &labels) == Some(3.0)
            && sample_value(&last.1, "reapwatch_cgroup_pids_max", &labels) == Some(100.0)
            && sample_value(&last.1, "reapwatch_cgroup_pids_current", &labels) == Some(4.0)
    });
    assert!(
        seen,
        "no zombies 3, pids 4/100 for {lossy:?}: last answer {} {}",
        last.0,
        last.1.lines().next().unwrap_or_default()
    );
}

#[test]
fn why_shows_hostile_names_neutralised() {
    let uid = "6e5d4c3b-2a1f-4e0d-9c8b-7a6f5e4d3c2b";
    let kubelet = FakeKubelet::new(
        "ns\u{202e}evil",
        "pod\u{200b}x",
        uid,
        "ctr\u{2066}y",
        CONTAINER_ID,
    );
    let base = TestCgroup::new("why-bytes");
    let container = base.nested(&format!("kubepods/burstable/pod{uid}/{CONTAINER_ID}"));
    let helper = Helper::start("invisible-comm", 2, &container);
    assert_eq!(proc_unreaped_children(helper.parent).len(), 2);

    let output = reapwatch(&[
        "why",
        &helper.parent.to_string(),
        "--watch",
        "1s",
        "--pod-logs-dir",
        &kubelet.pods_dir(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stderr: {stderr}");
    let text = String::from_utf8(output.stdout).expect("terminal output is UTF-8");
    assert!(
        !text.chars().any(|c| invisible(c) || c == '\u{fffd}'),
        "raw invisible characters reached the terminal: {text:?}"
    );
    let comm = r"a\u{202e}b\u{200b}c\xff";
    assert!(
        text.contains(&format!("process {} ({comm})", helper.parent)),
        "{text}"
    );
    assert!(text.contains("2 unreaped"), "{text}");
    assert!(
        text.contains(r"pod ns\u{202e}evil/pod\u{200b}x, container ctr\u{2066}y"),
        "{text}"
    );
}
