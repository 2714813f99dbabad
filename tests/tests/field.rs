//! The incident's own conditions, end to end: more zombies than the kernel maps hold, cgroups
//! that come and go, zombies reaped by another cgroup after their parent died, a sampler that
//! stalls or fails, and a restart in the middle of a leak.

use std::{
    collections::HashMap,
    fs,
    process::Command,
    time::{Duration, Instant},
};

use reapwatch_tests::{
    eventually, found_age_source, parent_entry, proc_unreaped_children, reapwatch_json,
    sample_value, thread_named, workspace_binary, Daemon, FakeKubelet, Helper, StoppedThread,
    TestCgroup,
};

/// Every counter series seen so far, to catch one that falls between two scrapes.
#[derive(Default)]
struct CounterWatch {
    last: HashMap<String, f64>,
}

impl CounterWatch {
    fn scrape(&mut self, daemon: &Daemon) -> String {
        let text = daemon.scrape();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            if !name.ends_with("_total") {
                continue;
            }
            let value: f64 = value.parse().expect("a number");
            if let Some(&before) = self.last.get(series) {
                assert!(value >= before, "{series} fell from {before} to {value}");
            }
            self.last.insert(series.to_owned(), value);
        }
        text
    }
}

fn removed(cgroup: &TestCgroup) -> bool {
    // Zombies on their way out still hold a v1 cgroup for a moment.
    eventually(Duration::from_secs(10), || {
        fs::remove_dir(&cgroup.path).is_ok()
    })
}

#[test]
fn more_zombies_than_the_maps_hold_are_counted_from_proc() {
    let cgroup = TestCgroup::new("overflow");
    let mut helper = Helper::start("leak", 500, &cgroup);
    assert_eq!(proc_unreaped_children(helper.parent).len(), 500);
    // 64 slots and 64 hash entries at most: most of the 500 cannot be held in the kernel.
    let daemon = Daemon::start(&["--max-zombies", "64"]);
    let pid = helper.parent.to_string();
    let path = cgroup.host_path();
    let labels = [("cgroup", path.as_str())];
    let mut text = String::new();
    // Found in /proc, each counts as created once; a new series shows zero to a scraper first.
    let seen = eventually(Duration::from_secs(10), || {
        text = daemon.scrape();
        sample_value(&text, "reapwatch_parent_zombies", &[("pid", &pid)]) == Some(500.0)
            && sample_value(&text, "reapwatch_zombies", &labels) == Some(500.0)
            && sample_value(&text, "reapwatch_zombies_created_total", &labels) == Some(500.0)
    });
    assert!(seen, "{text}");
    assert_eq!(
        sample_value(&text, "reapwatch_zombies_reaped_total", &labels),
        Some(0.0)
    );
    let full = sample_value(&text, "reapwatch_map_full_total", &[("map", "zombies")]);
    assert!(full.is_some_and(|f| f >= 372.0), "{full:?}");

    let report = reapwatch_json(&["snapshot", "--json", "--max-zombies", "64"]);
    assert_eq!(parent_entry(&report, helper.parent)["unreaped"], 500);
    let lost = report["tracer"]["losses"]["zombies_map_full"].as_u64();
    assert!(lost.is_some_and(|l| l >= 372), "{lost:?}");

    // Reaps of the zombies only userspace holds are counted too.
    helper.step();
    let reaped = eventually(Duration::from_secs(10), || {
        text = daemon.scrape();
        sample_value(&text, "reapwatch_zombies_reaped_total", &labels) == Some(500.0)
            && sample_value(&text, "reapwatch_zombies", &labels) == Some(0.0)
    });
    assert!(reaped, "{text}");
    assert_eq!(
        sample_value(&text, "reapwatch_zombies_created_total", &labels),
        Some(500.0)
    );
}

#[test]
fn counters_continue_when_a_cgroup_is_made_again_under_the_same_path() {
    let daemon = Daemon::start(&["--gc-grace", "1s"]);
    let cgroup = TestCgroup::new("remade");
    let path = cgroup.host_path();
    let labels = [("cgroup", path.as_str())];
    let mut watch = CounterWatch::default();
    let exits = |text: &str| sample_value(text, "reapwatch_process_exits_total", &labels);

    // Three children and the helper itself exit in the cgroup.
    drop(Helper::start("leak", 3, &cgroup));
    assert!(eventually(Duration::from_secs(10), || exits(
        &watch.scrape(&daemon)
    ) == Some(4.0)));
    assert!(removed(&cgroup));
    // Collected after the grace period: its series goes.
    assert!(eventually(Duration::from_secs(10), || exits(
        &watch.scrape(&daemon)
    )
    .is_none()));

    fs::create_dir(&cgroup.path).unwrap();
    drop(Helper::start("leak", 3, &cgroup));
    let mut text = String::new();
    let continued = eventually(Duration::from_secs(10), || {
        text = watch.scrape(&daemon);
        exits(&text) == Some(8.0)
    });
    assert!(continued, "{text}");
    // And it stays there.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(exits(&watch.scrape(&daemon)), Some(8.0));
}

/// A container restarted twice: three cgroups, one after the other, whose series merge when
/// the allow-list drops the cgroup label. The two old ones are removed and collected while
/// the third lives on; the merged series keeps what they counted.
#[test]
fn merged_series_never_fall_when_a_member_is_collected() {
    const UID: &str = "5d0c6a7e-1f2b-4c3d-8e9f-a0b1c2d3e4f5";
    let ids = ["a", "b", "c"].map(|hex| hex.repeat(64));
    let kubelet = FakeKubelet::new("restarts", "web-0", UID, "app", &ids[0]);
    for id in &ids[1..] {
        fs::write(
            kubelet
                .root
                .join(format!("containers/web-0_restarts_app-{id}.log")),
            "",
        )
        .unwrap();
    }
    let base = TestCgroup::new("merged");
    let daemon = Daemon::start(&[
        "--gc-grace",
        "1s",
        "--label-allow-list",
        "namespace,pod,container",
        "--pod-logs-dir",
        &kubelet.pods_dir(),
    ]);
    let mut watch = CounterWatch::default();
    let labels = [
        ("namespace", "restarts"),
        ("pod", "web-0"),
        ("container", "app"),
    ];
    let value = |text: &str, name: &str| sample_value(text, name, &labels);
    let mut text = String::new();
    let mut containers = Vec::new();
    for (round, id) in ids.iter().enumerate() {
        let container = base.nested(&format!("kubepods/burstable/pod{UID}/{id}"));
        // Three children and the helper itself exit in each.
        drop(Helper::start("leak", 3, &container));
        let exits = 4.0 * (round + 1) as f64;
        let counted = eventually(Duration::from_secs(20), || {
            text = watch.scrape(&daemon);
            value(&text, "reapwatch_process_exits_total") == Some(exits)
        });
        assert!(counted, "round {round}: {text}");
        containers.push(container);
    }
    let _running = containers.pop();
    for old in &containers {
        assert!(removed(old));
    }
    // The helpers' own zombies are their parent's, the test's, to count.
    assert_eq!(
        value(&text, "reapwatch_zombies_created_total"),
        Some(9.0),
        "{text}"
    );
    // Long enough for each removed cgroup to be collected: nothing falls (the watch checks
    // every counter at every scrape), nothing is counted twice.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        text = watch.scrape(&daemon);
        assert_eq!(value(&text, "reapwatch_process_exits_total"), Some(12.0));
        assert_eq!(value(&text, "reapwatch_zombies_created_total"), Some(9.0));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_reap_after_reparenting_is_charged_to_the_cgroup_that_created_the_zombie() {
    let daemon = Daemon::start(&[]);
    let reaper = TestCgroup::new("rp-reaper");
    let creator = TestCgroup::new("rp-a");
    let creator_dir = creator.path.to_str().unwrap().to_owned();
    let mut helper = Helper::start_with("orphans-from", 5, &[&creator_dir], &reaper);
    let (a, b) = (creator.host_path(), reaper.host_path());
    let (a, b) = ([("cgroup", a.as_str())], [("cgroup", b.as_str())]);
    let value = |text: &str, name: &str, labels: &[(&str, &str)]| sample_value(text, name, labels);

    let mut text = String::new();
    // Created by rp-a; the gauge follows them to their new parent.
    let moved = eventually(Duration::from_secs(10), || {
        text = daemon.scrape();
        value(&text, "reapwatch_zombies_created_total", &a) == Some(5.0)
            && value(&text, "reapwatch_zombies", &a) == Some(0.0)
            && value(&text, "reapwatch_zombies", &b) == Some(5.0)
    });
    assert!(moved, "{text}");

    helper.step();
    let reaped = eventually(Duration::from_secs(10), || {
        text = daemon.scrape();
        value(&text, "reapwatch_zombies_reaped_total", &a) == Some(5.0)
            && value(&text, "reapwatch_zombies", &b) == Some(0.0)
    });
    assert!(reaped, "{text}");
    // The reaper's cgroup made one zombie of its own (the child that died) and reaped it.
    assert_eq!(
        value(&text, "reapwatch_zombies_created_total", &b),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "reapwatch_zombies_reaped_total", &b),
        Some(1.0)
    );
}

#[test]
fn probes_and_scrapes_answer_while_sampling_is_stalled() {
    let daemon = Daemon::start(&[]);
    let sampler = thread_named(daemon.pid(), "sampler").expect("sampling has a thread of its own");
    let stalled = StoppedThread::stop(sampler);
    for _ in 0..5 {
        assert_eq!(daemon.get("/healthz").map(|r| r.0), Some(200));
        assert_eq!(daemon.get("/metrics").map(|r| r.0), Some(200));
    }
    // Three sample intervals (200 ms here) without a sample: not ready.
    let mut readyz = None;
    let unready = eventually(Duration::from_secs(5), || {
        readyz = daemon.get("/readyz");
        readyz.as_ref().is_some_and(|(status, _)| *status == 503)
    });
    assert!(unready, "{readyz:?}");
    assert!(readyz.unwrap().1.starts_with("stale"));
    drop(stalled);
    assert!(eventually(Duration::from_secs(5), || daemon
        .get("/readyz")
        .is_some_and(|(status, _)| status == 200)));
}

#[test]
fn failed_samples_are_counted_and_readiness_follows_them() {
    // A private mount namespace, to make /proc/loadavg unreadable for the daemon alone.
    let daemon = Daemon::start_wrapped(&["unshare", "--mount", "--propagation", "private"], &[]);
    let failures = |text: &str| sample_value(text, "reapwatch_sample_failures_total", &[]);
    let stamp = |text: &str| sample_value(text, "reapwatch_last_sample_timestamp_seconds", &[]);
    let text = daemon.scrape();
    assert_eq!(failures(&text), Some(0.0));
    let good = stamp(&text).expect("a last sample time");

    let garbage = std::env::temp_dir().join(format!("reapwatch-loadavg-{}", std::process::id()));
    fs::write(&garbage, "garbage\n").unwrap();
    let pid = daemon.pid().to_string();
    let in_daemon_ns = |args: &[&str]| {
        let status = Command::new("nsenter")
            .args(["--target", &pid, "--mount", "--"])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "{args:?}");
    };
    in_daemon_ns(&[
        "mount",
        "--bind",
        garbage.to_str().unwrap(),
        "/proc/loadavg",
    ]);

    let mut text = String::new();
    let counted = eventually(Duration::from_secs(15), || {
        text = daemon.scrape();
        failures(&text).is_some_and(|f| f >= 3.0)
            && daemon.get("/readyz").is_some_and(|(s, _)| s == 503)
    });
    assert!(counted, "{text}");
    // The last good sample is still served, with its time.
    let stale = stamp(&text).unwrap();
    assert!(stale >= good);
    assert!(sample_value(&text, "reapwatch_node_tasks", &[]).is_some());

    in_daemon_ns(&["umount", "/proc/loadavg"]);
    let recovered = eventually(Duration::from_secs(15), || {
        text = daemon.scrape();
        stamp(&text).is_some_and(|t| t > stale)
            && daemon.get("/readyz").is_some_and(|(s, _)| s == 200)
    });
    let _ = fs::remove_file(&garbage);
    assert!(recovered, "{text}");
}

#[test]
fn a_restart_neither_loses_nor_double_counts_zombies() {
    let cgroup = TestCgroup::new("restart");
    let path = cgroup.host_path();
    let labels = [("cgroup", path.as_str())];
    let value = |text: &str, name: &str| sample_value(text, name, &labels);

    let first = Daemon::start(&[]);
    let early_made = Instant::now();
    let mut early = Helper::start("leak", 3, &cgroup);
    assert!(eventually(Duration::from_secs(10), || value(
        &first.scrape(),
        "reapwatch_zombies_created_total"
    ) == Some(3.0)));
    // An age read from the scheduler errs short, by up to a third of a second seen under
    // emulation: the early zombies get well older than the restart.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(first.terminate().code(), Some(0));

    // Made while nothing watched.
    let late = Helper::start("leak", 2, &cgroup);
    let restarted = Instant::now();
    let second = Daemon::start(&[]);
    let (early_pid, late_pid) = (early.parent.to_string(), late.parent.to_string());
    let per_parent =
        |text: &str, pid: &str| sample_value(text, "reapwatch_parent_zombies", &[("pid", pid)]);
    let mut text = String::new();
    // Each of the five counted once, when first seen (a new series shows zero to a scraper
    // first).
    let seen = eventually(Duration::from_secs(10), || {
        text = second.scrape();
        per_parent(&text, &early_pid) == Some(3.0)
            && per_parent(&text, &late_pid) == Some(2.0)
            && value(&text, "reapwatch_zombies_created_total") == Some(5.0)
    });
    assert!(seen, "{text}");
    assert_eq!(proc_unreaped_children(early.parent).len(), 3);
    assert_eq!(proc_unreaped_children(late.parent).len(), 2);
    assert_eq!(value(&text, "reapwatch_zombies_reaped_total"), Some(0.0));
    assert_eq!(value(&text, "reapwatch_zombies"), Some(5.0));
    // Their exits were not seen, but the scheduler's last run of each is its exit: the
    // oldest age goes back before the restart, to when the early ones were made.
    let oldest = value(&text, "reapwatch_zombie_oldest_seconds").unwrap();
    let (since_made, since_restart) = (early_made.elapsed(), restarted.elapsed());
    assert!(
        oldest > since_restart.as_secs_f64() && oldest <= since_made.as_secs_f64() + 0.1,
        "oldest {oldest}, restarted {since_restart:?} ago, made {since_made:?} ago"
    );

    let report = reapwatch_json(&["snapshot", "--json"]);
    for parent in [early.parent, late.parent] {
        let children = parent_entry(&report, parent)["children"]
            .as_array()
            .unwrap();
        assert!(children
            .iter()
            .all(|c| c["age_source"] == found_age_source()));
    }

    early.step();
    let reaped = eventually(Duration::from_secs(10), || {
        text = second.scrape();
        value(&text, "reapwatch_zombies_reaped_total") == Some(3.0)
            && value(&text, "reapwatch_zombies") == Some(2.0)
    });
    assert!(reaped, "{text}");
    assert_eq!(value(&text, "reapwatch_zombies_created_total"), Some(5.0));
}

/// Sets the pids.max of `cgroup`, which holds a `leak 1` helper and its zombie, to those two;
/// then `tries` shells join it (joining is not limited) and each tries a fork, refused.
/// Returns the refusals `pids.events` counts.
fn fill_and_refuse_forks(cgroup: &TestCgroup, tries: usize) -> u64 {
    fs::write(cgroup.path.join("pids.max"), "2").unwrap();
    // A program outside the shell (busybox's sh runs its own applets unforked), and not last
    // (a shell may exec the last command instead of forking it).
    let script = format!(
        "echo $$ > {}/cgroup.procs && {} --version > /dev/null && exit 0",
        cgroup.path.display(),
        workspace_binary("reapwatch").display()
    );
    for _ in 0..tries {
        let status = Command::new("/bin/sh")
            .args(["-c", &script])
            .status()
            .unwrap();
        assert!(!status.success(), "a fork at pids.max succeeded");
    }
    let events = fs::read_to_string(cgroup.path.join("pids.events")).unwrap();
    events
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{events}"))
}

/// A cgroup at its pids.max: the forks it refuses are counted, as `pids.events` counts them.
#[test]
fn forks_refused_at_pids_max_are_counted() {
    let daemon = Daemon::start(&[]);
    let cgroup = TestCgroup::new("pids-full");
    let helper = Helper::start("leak", 1, &cgroup);
    let refused = fill_and_refuse_forks(&cgroup, 3) as f64;
    assert!(refused >= 3.0);

    let path = cgroup.host_path();
    let labels = [("cgroup", path.as_str())];
    let mut text = String::new();
    let counted = eventually(Duration::from_secs(10), || {
        text = daemon.scrape();
        sample_value(&text, "reapwatch_cgroup_pids_fork_failures_total", &labels) == Some(refused)
    });
    assert!(counted, "{text}");
    assert_eq!(
        sample_value(&text, "reapwatch_cgroup_pids_max", &labels),
        Some(2.0)
    );
    assert_eq!(
        sample_value(&text, "reapwatch_cgroup_pids_current", &labels),
        Some(2.0)
    );
    drop(helper);
}

/// `scan` and `top` show a cgroup at its pids.max as FULL, with the forks it refused.
#[test]
fn a_full_cgroup_shows_in_scan_and_top() {
    let cgroup = TestCgroup::new("pids-full-cli");
    let _helper = Helper::start("leak", 1, &cgroup);
    let refused = fill_and_refuse_forks(&cgroup, 1);
    let path = cgroup.host_path();

    let output = Command::new(workspace_binary("reapwatch"))
        .args(["scan", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let entry = report["cgroups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cgroup"] == path.as_str())
        .unwrap_or_else(|| panic!("{path} not in {report}"));
    assert_eq!(entry["pids_full"], true, "{entry}");
    assert_eq!(entry["pids_fork_failures"], refused, "{entry}");
    assert_eq!(entry["pids_current"], 2);

    let table = Command::new(workspace_binary("reapwatch"))
        .arg("scan")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    let row = table
        .lines()
        .find(|l| l.ends_with(&path))
        .unwrap_or_else(|| panic!("{table}"));
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(fields[1..4], ["2/2", "FULL", &refused.to_string()], "{row}");

    let top = Command::new(workspace_binary("reapwatch"))
        .args(["top", "--iterations", "1"])
        .output()
        .unwrap();
    let top = String::from_utf8_lossy(&top.stdout);
    let line = top
        .lines()
        .find(|l| l.starts_with("FULL (pids.max): "))
        .unwrap_or_else(|| panic!("{top}"));
    assert!(
        line.contains(&format!("{path} 2/2, {refused} forks refused")),
        "{line}"
    );
}

/// `--cgroup-series active`: a cgroup whose children are reaped at once has no series; one
/// with unreaped zombies has them all, its counters whole.
#[test]
fn only_active_cgroups_get_series_when_asked() {
    let daemon = Daemon::start(&["--cgroup-series", "active"]);
    let (quiet, leaking) = (TestCgroup::new("quiet"), TestCgroup::new("leaking"));
    // Forks without a zombie ever (SIGCHLD ignored): a storm's zombies, however brief, can be
    // caught by a sample on a slow machine, and a cgroup with zombies within the ETA window
    // is active.
    drop(Helper::start("ignore", 20, &quiet));
    let _leak = Helper::start("leak", 2, &leaking);
    let (quiet, leaking) = (quiet.host_path(), leaking.host_path());
    let mut text = String::new();
    let seen = eventually(Duration::from_secs(20), || {
        text = daemon.scrape();
        sample_value(&text, "reapwatch_zombies", &[("cgroup", &leaking)]) == Some(2.0)
            && sample_value(
                &text,
                "reapwatch_process_forks_total",
                &[("cgroup", &leaking)],
            ) == Some(2.0)
    });
    assert!(seen, "{text}");
    assert!(!text.contains(&format!("cgroup=\"{quiet}\"")), "{text}");
}
