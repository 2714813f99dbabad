//! `reapwatch scan` and `reapwatch why` against real workloads, checked against /proc.

use std::{
    fs,
    process::{Command, Output},
    time::Instant,
};

use reapwatch_tests::{
    found_age_source, parent_entry, proc_unreaped_children, workspace_binary, wrapped, Helper,
    TestCgroup, DAEMONSET_CAPABILITIES,
};
use serde_json::Value;

/// Full root, and root with only the DaemonSet's capabilities: every ad-hoc command must tell
/// the same truth under both.
const PRIVILEGES: [&[&str]; 2] = [&[], DAEMONSET_CAPABILITIES];

fn unprivileged(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(workspace_binary("reapwatch"))
        .args(args)
        .output()
        .expect("setpriv (util-linux)")
}

fn reapwatch(args: &[&str]) -> Output {
    reapwatch_under(&[], args)
}

fn reapwatch_under(wrapper: &[&str], args: &[&str]) -> Output {
    wrapped(wrapper, &workspace_binary("reapwatch"))
        .args(args)
        .output()
        .expect("run reapwatch")
}

fn json_under(wrapper: &[&str], args: &[&str]) -> Value {
    let output = reapwatch_under(wrapper, args);
    assert!(
        output.status.success(),
        "{wrapper:?} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The kernel shows a zombie's exit code (`/proc/<pid>/stat` field 52) only to a reader that
/// may ptrace it: root with the DaemonSet's capabilities may not ptrace a zombie whose
/// capabilities exceed its own (one made by full root), and reads `0` there. Every command
/// must then say it does not know, never report success; the zombies of a parent that runs
/// with the same capabilities as the reader keep their code. Ages come from the scheduler,
/// which needs no such access.
#[test]
fn exit_codes_and_ages_under_the_daemonsets_capabilities() {
    let cgroup = TestCgroup::new("daemonset-caps");
    let started = Instant::now();
    let hidden = Helper::start("leak", 3, &cgroup);
    let visible = Helper::start_wrapped(DAEMONSET_CAPABILITIES, "leak", 2, &[], &cgroup);
    let made = started.elapsed().as_secs_f64();
    for wrapper in PRIVILEGES {
        let capped = !wrapper.is_empty();
        let before = started.elapsed().as_secs_f64();
        for command in ["snapshot", "scan"] {
            let report = json_under(wrapper, &[command, "--json"]);
            let after = started.elapsed().as_secs_f64();
            for (helper, n) in [(&hidden, 3), (&visible, 2)] {
                let parent = parent_entry(&report, helper.parent);
                let children = parent["children"].as_array().unwrap();
                assert_eq!(children.len(), n, "{command} {wrapper:?}: {parent}");
                let known = !capped || helper.parent == visible.parent;
                for child in children {
                    let code = if known { Value::from(7) } else { Value::Null };
                    assert_eq!(child["exit_code"], code, "{command} {wrapper:?}: {child}");
                    assert_eq!(
                        child["signal"],
                        Value::Null,
                        "{command} {wrapper:?}: {child}"
                    );
                    assert_eq!(child["age_source"], found_age_source());
                    if found_age_source() == "scheduler" {
                        // Made between `started` and `made`, read between `before` and `after`;
                        // the scheduler's clock errs short by interrupt time, never long.
                        let age = child["age_seconds"].as_f64().unwrap();
                        assert!(
                            (before - made - 0.5..=after + 0.05).contains(&age),
                            "{command} {wrapper:?}: {age} not in {}..{after}: {child}",
                            before - made
                        );
                    }
                }
            }
        }
        let text = String::from_utf8(
            reapwatch_under(
                wrapper,
                &["why", &hidden.parent.to_string(), "--watch", "0s"],
            )
            .stdout,
        )
        .unwrap();
        let ending = if capped {
            "exit code unknown"
        } else {
            "exit 7"
        };
        assert_eq!(text.matches(ending).count(), 3, "{wrapper:?}: {text}");
        assert!(!text.contains("exit 0"), "{wrapper:?}: {text}");
        let text = String::from_utf8(
            reapwatch_under(
                wrapper,
                &["why", &visible.parent.to_string(), "--watch", "0s"],
            )
            .stdout,
        )
        .unwrap();
        assert_eq!(text.matches("exit 7").count(), 2, "{wrapper:?}: {text}");
        // top loads the programs too, and lists both parents with their unreaped children.
        let output = reapwatch_under(wrapper, &["top", "--iterations", "1"]);
        assert!(output.status.success(), "{wrapper:?}: {output:?}");
        let top = String::from_utf8(output.stdout).unwrap();
        for (helper, n) in [(&hidden, 3), (&visible, 2)] {
            let row = top
                .lines()
                .find(|l| l.split_whitespace().next() == Some(&helper.parent.to_string()))
                .unwrap_or_else(|| panic!("{wrapper:?}: {} not in {top}", helper.parent));
            assert_eq!(
                row.split_whitespace().nth(2),
                Some(&*n.to_string()),
                "{row}"
            );
        }
    }
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

/// `why`, as full root and with the DaemonSet's capabilities: the same diagnosis from both.
fn why(pid: u32, watch: &str) -> String {
    let texts: Vec<String> = PRIVILEGES
        .iter()
        .map(|wrapper| {
            let output = reapwatch_under(wrapper, &["why", &pid.to_string(), "--watch", watch]);
            assert!(
                output.status.success(),
                "{wrapper:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            String::from_utf8(output.stdout).unwrap()
        })
        .collect();
    // Ages, exit codes, states and counts of calls differ (time passes; the capped run may not
    // see codes): compare the diagnosis, the lines below the process's, without the children
    // and numbers.
    let diagnosis = |text: &str| -> String {
        text.lines()
            .filter(|l| !l.starts_with("    ") && !l.starts_with("process "))
            .flat_map(|l| l.chars().filter(|c| !c.is_ascii_digit()).chain(['\n']))
            .collect()
    };
    assert_eq!(diagnosis(&texts[0]), diagnosis(&texts[1]), "{texts:?}");
    texts.into_iter().next_back().unwrap()
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
