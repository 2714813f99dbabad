//! The command line as an operator meets it: one-line errors that keep what to do next, the
//! same rule for every duration, filters that cannot match, and the flags every command takes.

use std::{fs, process::Command};

use reapwatch_tests::{parent_entry, workspace_binary, FakeKubelet, Helper, TestCgroup};

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn reapwatch(args: &[&str]) -> Run {
    let output = Command::new(workspace_binary("reapwatch"))
        .args(args)
        .output()
        .expect("run reapwatch");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Exactly one line on stderr, `reapwatch: ...`, and the exit code; the line is returned.
fn one_line_error(args: &[&str], code: i32) -> String {
    let run = reapwatch(args);
    assert_eq!(run.code, Some(code), "{args:?}: {}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: {}", run.stderr);
    assert!(
        lines[0].starts_with("reapwatch: "),
        "{args:?}: {}",
        run.stderr
    );
    assert!(!run.stderr.contains('\x1b'), "{args:?}: {:?}", run.stderr);
    lines[0].to_owned()
}

#[test]
fn usage_errors_keep_the_missing_argument_the_values_and_the_suggestion() {
    for (args, wanted) in [
        (&["why"][..], "not provided: <PID>"),
        (
            &["snapshot", "--cgroup-hierarchy", "v2"],
            "[possible values: auto, unified, pids]",
        ),
        (
            &["snapshot", "--jsn"],
            "tip: a similar argument exists: '--json'",
        ),
        (
            &["trace", "--duration", "banana"],
            "invalid duration \"banana\": expected a number and a unit, such as 30s, 5m or 1h",
        ),
    ] {
        let line = one_line_error(args, 2);
        assert!(line.contains(wanted), "{args:?}: {line}");
        assert!(
            !line.contains("Usage:") && !line.contains("--help"),
            "{line}"
        );
    }
}

#[test]
fn every_interval_and_watch_must_be_positive() {
    for args in [
        &["top", "--interval", "0"][..],
        &["scan", "--watch", "5s", "--interval", "0"],
        &["scan", "--watch", "0s"],
        &["trace", "--duration", "0"],
    ] {
        let line = one_line_error(args, 2);
        assert!(line.ends_with("must be more than zero"), "{args:?}: {line}");
    }
    // serve's durations follow the same rule, with the same words.
    let line = one_line_error(&["serve", "--sample-interval", "0s"], 1);
    assert!(
        line.ends_with("--sample-interval: invalid duration \"0s\": must be more than zero"),
        "{line}"
    );
    // `why --watch 0s` means "do not watch".
    let run = reapwatch(&["why", &std::process::id().to_string(), "--watch", "0s"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("not watched (--watch 0s)"),
        "{}",
        run.stdout
    );
}

#[test]
fn config_errors_name_the_file_the_line_and_the_key() {
    let path = std::env::temp_dir().join(format!("reapwatch-usage-{}.toml", std::process::id()));
    let config = path.to_str().unwrap();
    let check = |text: &str, wanted: &str| {
        fs::write(&path, text).unwrap();
        let line = one_line_error(&["serve", "--config", config], 1);
        assert!(line.contains(wanted), "{text:?}: {line}");
    };
    check(
        "listen = \"127.0.0.1:9750\"\n\neta-window = 15.0.0\n",
        &format!("reapwatch: invalid config {config}, line 3, key eta-window: "),
    );
    check(
        "top-parents = 5\nlisten = 9750\n",
        "line 2, key listen: invalid type: integer `9750`, expected a string",
    );
    // What the file holds is echoed escaped: it cannot rewrite the operator's screen.
    check("\"\\u001b[2J\" = 1\n", "line 1: unknown field `\\x1b[2J`");
    // Durations read from the file are checked as the flags are.
    check(
        "sample-interval = \"0s\"\n",
        &format!(
            "reapwatch: invalid config {config}, key sample-interval: invalid duration \"0s\": \
             must be more than zero"
        ),
    );
    fs::remove_file(&path).unwrap();
}

#[test]
fn trace_refuses_a_pid_that_does_not_exist() {
    // Pids are below pid_max: this one cannot exist.
    let pid_max = fs::read_to_string("/proc/sys/kernel/pid_max").unwrap();
    // A bounded trace: before the check, it traced nothing for as long as it was let.
    let line = one_line_error(&["trace", "--duration", "2s", "--pid", pid_max.trim()], 1);
    assert_eq!(
        line,
        format!("reapwatch: --pid {}: no such process", pid_max.trim())
    );
}

#[test]
fn trace_refuses_a_cgroup_in_no_hierarchy() {
    let path = format!("/reapwatch-tests/nonexistent-{}", std::process::id());
    let line = one_line_error(&["trace", "--duration", "2s", "--cgroup", &path], 1);
    assert!(
        line.starts_with(&format!("reapwatch: --cgroup {path}: no such cgroup")),
        "{line}"
    );
}

#[test]
fn trace_warns_of_a_container_that_matches_none_yet_and_traces() {
    let name = format!("nope-{}", std::process::id());
    let run = reapwatch(&["trace", "--container", &name, "--duration", "1s"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(
        run.stderr.lines().next(),
        Some(
            format!("reapwatch: --container {name} matches no container yet: tracing, in case it starts")
                .as_str()
        ),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("reapwatch: tracing"), "{}", run.stderr);
}

#[test]
fn snapshot_names_each_parents_pod_and_container() {
    const CONTAINER_ID: &str = "5a4b3c2d1e0f5a4b3c2d1e0f5a4b3c2d1e0f5a4b3c2d1e0f5a4b3c2d1e0f5a4b";
    let uid = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";
    let kubelet = FakeKubelet::new("shop", "cart-5c8d", uid, "worker", CONTAINER_ID);
    let base = TestCgroup::new("usage-k8s");
    let container = base.nested(&format!("kubepods/besteffort/pod{uid}/{CONTAINER_ID}"));
    let in_pod = Helper::start("leak", 2, &container);
    let plain = TestCgroup::new("usage-plain");
    let outside = Helper::start("leak", 1, &plain);

    let run = reapwatch(&["snapshot", "--json", "--pod-logs-dir", &kubelet.pods_dir()]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let named = parent_entry(&report, in_pod.parent);
    assert_eq!(
        (&named["namespace"], &named["pod"], &named["container"]),
        (&"shop".into(), &"cart-5c8d".into(), &"worker".into()),
        "{named}"
    );
    let unnamed = parent_entry(&report, outside.parent);
    for field in ["namespace", "pod", "container"] {
        assert!(unnamed[field].is_null(), "{field}: {unnamed}");
    }

    let run = reapwatch(&["snapshot", "--pod-logs-dir", &kubelet.pods_dir()]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let row = run
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&in_pod.parent.to_string()))
        .unwrap_or_else(|| panic!("no row for {} in\n{}", in_pod.parent, run.stdout));
    assert!(row.contains("shop/cart-5c8d/worker"), "{row}");
}

#[test]
fn scan_and_why_take_the_cgroup_hierarchy() {
    let cgroup = TestCgroup::new("usage-hierarchy");
    let helper = Helper::start("leak", 1, &cgroup);
    let run = reapwatch(&["scan", "--json", "--cgroup-hierarchy", "auto"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(parent_entry(&report, helper.parent)["unreaped"], 1);

    let pid = helper.parent.to_string();
    let run = reapwatch(&["why", &pid, "--watch", "0s", "--cgroup-hierarchy", "auto"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stdout
            .contains(&format!("cgroup {}", cgroup.host_path())),
        "{}",
        run.stdout
    );
}

#[test]
fn serve_help_is_laid_out_as_the_other_commands() {
    let help = |command: &str| reapwatch(&[command, "--help"]).stdout;
    let (serve, snapshot) = (help("serve"), help("snapshot"));
    // One flag's text in `--help`: from its line to the next flag's.
    let block = |help: &str, flag: &str| -> String {
        let start = help
            .find(&format!("      {flag} "))
            .unwrap_or_else(|| panic!("no {flag} in\n{help}"));
        let rest = &help[start..];
        let end = rest[1..].find("\n      --").or(rest[1..].find("\n  -h"));
        rest[..end.map_or(rest.len(), |e| e + 1)]
            .trim_end()
            .to_owned()
    };
    // Flags the file can set too keep their default in the same paragraph as clap's own.
    for flag in [
        "--pod-logs-dir",
        "--max-zombies",
        "--max-cgroups",
        "--max-waits",
    ] {
        assert_eq!(block(&serve, flag), block(&snapshot, flag));
    }
    let hierarchy = block(&serve, "--cgroup-hierarchy");
    assert!(
        hierarchy.contains("\n          [default: auto]\n")
            && hierarchy.contains("Possible values:"),
        "{hierarchy}"
    );
}
