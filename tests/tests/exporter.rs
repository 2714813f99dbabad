//! `reapwatch serve` end to end: real programs, real zombies, scraped over HTTP.

use std::{
    fs,
    process::Command,
    time::{Duration, Instant},
};

use reapwatch::cgroup::HierarchyChoice;
use reapwatch_tests::{
    eventually, get, mounted_hierarchies, promtool_check_metrics, sample_value, workspace_binary,
    Daemon, FakeKubelet, Helper, TestCgroup, KERNEL_TICK_SECONDS,
};

const CONTAINER_ID: &str = "3f2e1d0c9b8a79685746352413021f0e3f2e1d0c9b8a79685746352413021f0e";

/// A zombie-leaking workload in a kubelet-shaped cgroup is attributed to its namespace, pod
/// and container, in the v1 `pids` or the unified hierarchy; where that hierarchy has the pids
/// controller, the container's pids.current and pids.max are exported beside it.
fn attribution(choice: HierarchyChoice, uid: &str, kubelet_path: &str) {
    let flag = match choice {
        HierarchyChoice::Pids => "pids",
        HierarchyChoice::Unified => "unified",
        HierarchyChoice::Auto => "auto",
    };
    let kubelet = FakeKubelet::new("payments", "api-7d9f", uid, "server", CONTAINER_ID);
    let base = TestCgroup::in_hierarchy(choice, "k8s");
    let container = base.nested(kubelet_path);
    let pids_max = container.path.join("pids.max");
    let limited = pids_max.exists();
    if limited {
        fs::write(&pids_max, "50").unwrap();
    }
    let daemon = Daemon::start(&[
        "--cgroup-hierarchy",
        flag,
        "--pod-logs-dir",
        &kubelet.pods_dir(),
    ]);
    // Every zombie exits, and the helper last waits, after this.
    let started = Instant::now();
    let helper = Helper::start("leak", 3, &container);

    let cgroup = container.host_path();
    let labels = [
        ("cgroup", cgroup.as_str()),
        ("namespace", "payments"),
        ("pod", "api-7d9f"),
        ("container", "server"),
    ];
    let pid = helper.parent.to_string();
    let mut parent_labels = labels.to_vec();
    parent_labels.extend([("pid", pid.as_str()), ("comm", "zombie-helper")]);
    let mut text = String::new();
    let seen = eventually(Duration::from_secs(10), || {
        text = daemon.scrape();
        sample_value(&text, "reapwatch_zombies", &labels) == Some(3.0)
            && sample_value(&text, "reapwatch_zombies_created_total", &labels) == Some(3.0)
            && sample_value(&text, "reapwatch_parent_zombies", &parent_labels) == Some(3.0)
    });
    assert!(seen, "not attributed:\n{text}");
    assert_eq!(
        sample_value(&text, "reapwatch_process_forks_total", &labels),
        Some(3.0)
    );
    if limited {
        // The helper and its 3 zombies.
        assert_eq!(
            sample_value(&text, "reapwatch_cgroup_pids_current", &labels),
            Some(4.0)
        );
        assert_eq!(
            sample_value(&text, "reapwatch_cgroup_pids_max", &labels),
            Some(50.0)
        );
    }
    let elapsed = started.elapsed().as_secs_f64() + KERNEL_TICK_SECONDS;
    let oldest = sample_value(&text, "reapwatch_zombie_oldest_seconds", &labels);
    assert!(
        oldest.is_some_and(|age| (0.0..=elapsed).contains(&age)),
        "oldest {oldest:?}, test ran {elapsed}s"
    );
    // Others' zombies and tasks may come and go meanwhile: ours are a floor, the node's
    // settings a ceiling.
    let limit = |name: &str| -> f64 {
        fs::read_to_string(format!("/proc/sys/kernel/{name}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (pid_max, threads_max) = (limit("pid_max"), limit("threads-max"));
    assert_eq!(
        sample_value(&text, "reapwatch_node_pid_max", &[]),
        Some(pid_max)
    );
    assert_eq!(
        sample_value(&text, "reapwatch_node_threads_max", &[]),
        Some(threads_max)
    );
    let zombies = sample_value(&text, "reapwatch_node_zombies", &[]);
    assert!(
        zombies.is_some_and(|n| (3.0..pid_max).contains(&n)),
        "{zombies:?}"
    );
    // The 3 zombies, the helper and the daemon at least.
    let tasks = sample_value(&text, "reapwatch_node_tasks", &[]);
    assert!(
        tasks.is_some_and(|n| (5.0..=pid_max.min(threads_max)).contains(&n)),
        "{tasks:?}"
    );
    promtool_check_metrics(&text).unwrap();
    // The helper waits, but with WNOWAIT, which reaps nothing: a parent that "waits wrong".
    let wait_age = sample_value(&text, "reapwatch_parent_wait_age_seconds", &[("pid", &pid)]);
    assert!(
        wait_age.is_some_and(|age| (0.0..=elapsed).contains(&age)),
        "{wait_age:?}, test ran {elapsed}s"
    );
}

/// Each mounted hierarchy (v1 `pids`, unified) with each kubelet cgroup driver's paths.
fn attribution_in_every_hierarchy(uid: &str, kubelet_path: &str) {
    let hierarchies = mounted_hierarchies();
    assert!(!hierarchies.is_empty(), "no cgroup hierarchy is mounted");
    for choice in hierarchies {
        attribution(choice, uid, kubelet_path);
    }
}

#[test]
fn attribution_with_the_cgroupfs_driver() {
    let uid = "8b1f3c2a-0d4e-4f5a-9b6c-7d8e9f0a1b2c";
    attribution_in_every_hierarchy(uid, &format!("kubepods/burstable/pod{uid}/{CONTAINER_ID}"));
}

#[test]
fn attribution_with_the_systemd_driver() {
    let uid = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
    let slice_uid = uid.replace('-', "_");
    attribution_in_every_hierarchy(
        uid,
        &format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{slice_uid}.slice/cri-containerd-{CONTAINER_ID}.scope"
        ),
    );
}

#[test]
fn hostile_process_names_do_not_break_the_exposition() {
    let cgroup = TestCgroup::new("serve-comm");
    let daemon = Daemon::start(&[]);
    let helper = Helper::start("hostile-comm", 1, &cgroup);
    let pid = helper.parent.to_string();
    let wanted = [("pid", pid.as_str()), ("comm", "a\"b\nc{}\u{1b}[2J")];
    let mut text = String::new();
    let seen = eventually(Duration::from_secs(10), || {
        text = daemon.scrape();
        sample_value(&text, "reapwatch_parent_zombies", &wanted) == Some(1.0)
    });
    assert!(seen, "{text}");
    promtool_check_metrics(&text).unwrap();
}

#[test]
fn openmetrics_when_asked() {
    let daemon = Daemon::start(&[]);
    let url = format!("http://127.0.0.1:{}/metrics", daemon.port);
    let (status, body) = get(
        &url,
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(
        body.contains("# TYPE reapwatch_events_lost counter\n"),
        "{body}"
    );
    let (_, plain) = get(&url, &[]).unwrap();
    assert!(!plain.contains("# EOF"));
    assert!(plain.contains("# TYPE reapwatch_events_lost_total counter\n"));
    assert_eq!(daemon.get("/healthz").unwrap().0, 200);
    assert_eq!(daemon.get("/nope").unwrap().0, 404);
}

/// The daemon in a pids cgroup that allows no new task: it must still answer, with the zombies
/// made meanwhile, and never have tried to create a task.
#[test]
fn keeps_answering_when_no_task_can_be_created() {
    let daemon = Daemon::start(&[]);
    // The hierarchy with the pids controller: v1 `pids`, or the unified one on pure v2.
    let jail = TestCgroup::new("no-pids");
    fs::write(jail.path.join("cgroup.procs"), daemon.pid().to_string()).unwrap();
    let current = fs::read_to_string(jail.path.join("pids.current")).unwrap();
    fs::write(jail.path.join("pids.max"), current.trim()).unwrap();
    // Two threads, both made at start-up: the one that answers and the sampler.
    assert_eq!(current.trim(), "2");

    let workload = TestCgroup::new("starved-leak");
    let helper = Helper::start("leak", 4, &workload);
    let pid = helper.parent.to_string();
    let seen = eventually(Duration::from_secs(10), || {
        sample_value(
            &daemon.scrape(),
            "reapwatch_parent_zombies",
            &[("pid", &pid)],
        ) == Some(4.0)
    });
    assert!(seen);
    let events = fs::read_to_string(jail.path.join("pids.events")).unwrap();
    assert_eq!(events.trim(), "max 0", "the daemon tried to create a task");
    let status = daemon.terminate();
    assert!(status.success(), "{status}");
}

/// With a probes' address and passwords, its four threads are all made at start-up: in a pids
/// cgroup that allows no new task, a first login (a bcrypt check) and the probes still answer.
#[test]
fn checks_passwords_and_answers_probes_when_no_task_can_be_created() {
    use base64::Engine;
    let dir = std::env::temp_dir().join(format!("reapwatch-jailed-web-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let config = dir.join("web.yml");
    let hash = bcrypt::hash("scrape-me", 4).unwrap();
    fs::write(
        &config,
        format!("basic_auth_users:\n  prometheus: '{hash}'\n"),
    )
    .unwrap();
    let health_port = reapwatch_tests::free_port();
    let daemon = Daemon::start(&[
        "--web-config-file",
        &config.display().to_string(),
        "--health-listen",
        &format!("127.0.0.1:{health_port}"),
    ]);
    let jail = TestCgroup::new("no-pids-web");
    fs::write(jail.path.join("cgroup.procs"), daemon.pid().to_string()).unwrap();
    let current = fs::read_to_string(jail.path.join("pids.current")).unwrap();
    fs::write(jail.path.join("pids.max"), current.trim()).unwrap();
    // The one that answers, the sampler, the probes' and the bcrypt checks'.
    assert_eq!(current.trim(), "4");

    let credentials = base64::engine::general_purpose::STANDARD.encode("prometheus:scrape-me");
    let authorization = format!("Basic {credentials}");
    let metrics = format!("http://127.0.0.1:{}/metrics", daemon.port);
    assert_eq!(
        get(&metrics, &[("Authorization", &authorization)]).map(|(status, _)| status),
        Some(200)
    );
    assert_eq!(get(&metrics, &[]).map(|(status, _)| status), Some(401));
    for path in ["/healthz", "/readyz"] {
        let url = format!("http://127.0.0.1:{health_port}{path}");
        assert_eq!(
            get(&url, &[]).map(|(status, _)| status),
            Some(200),
            "{path}"
        );
    }
    let events = fs::read_to_string(jail.path.join("pids.events")).unwrap();
    assert_eq!(events.trim(), "max 0", "the daemon tried to create a task");
    let status = daemon.terminate();
    assert!(status.success(), "{status}");
    fs::remove_dir_all(&dir).unwrap();
}

/// Ids of the eBPF programs a process holds (by program or link fd), from its fd table.
fn program_ids(pid: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let info = fs::read_to_string(entry.path()).ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .map(|id| id.trim().parse().unwrap())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn program_exists(id: u32) -> bool {
    #[repr(C)]
    struct GetFdById {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    let attr = GetFdById {
        id,
        next_id: 0,
        open_flags: 0,
    };
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            &attr,
            size_of::<GetFdById>(),
        )
    };
    if fd >= 0 {
        unsafe { libc::close(fd as i32) };
    }
    fd >= 0
}

#[test]
fn sigterm_detaches_every_program() {
    let daemon = Daemon::start(&[]);
    let ids = program_ids(daemon.pid());
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(ids.iter().all(|&id| program_exists(id)));
    let status = daemon.terminate();
    assert!(status.success(), "{status}");
    // Program teardown is asynchronous (RCU) in the kernel.
    assert!(eventually(Duration::from_secs(10), || ids
        .iter()
        .all(|&id| !program_exists(id))));
}

#[test]
fn port_in_use_is_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = Command::new(workspace_binary("reapwatch"))
        .args(["serve", "--listen", &address])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("reapwatch: cannot listen on {address}")),
        "{stderr}"
    );
}

/// `--gc-grace 0s`, the shortest: a kubelet-shaped cgroup whose pod names are never found (so
/// its counters wait to settle) leaks, reaps and is removed before they settle. It is
/// collected at once, and its series still shows every count before it goes.
#[test]
fn the_shortest_gc_grace_loses_no_count() {
    let daemon = Daemon::start(&["--gc-grace", "0s"]);
    let uid = "0c1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5";
    let base = TestCgroup::new("k8s-gc");
    let container = base.nested(&format!("kubepods/burstable/pod{uid}/{CONTAINER_ID}"));
    let cgroup = container.host_path();
    let mut helper = Helper::start("leak", 3, &container);
    let labels = [("cgroup", cgroup.as_str())];
    let mut text = String::new();
    // Its gauges are exported at once, under its path.
    assert!(
        eventually(Duration::from_secs(10), || {
            text = daemon.scrape();
            sample_value(&text, "reapwatch_zombies", &labels) == Some(3.0)
        }),
        "the cgroup never showed:\n{text}"
    );
    helper.step();
    drop(helper);
    assert!(
        eventually(Duration::from_secs(5), || fs::remove_dir(&container.path)
            .is_ok()),
        "the cgroup never emptied"
    );
    let counted = |text: &str, name: &str| sample_value(text, name, &labels);
    assert!(
        eventually(Duration::from_secs(10), || {
            text = daemon.scrape();
            counted(&text, "reapwatch_zombies_created_total") == Some(3.0)
                && counted(&text, "reapwatch_zombies_reaped_total") == Some(3.0)
                && counted(&text, "reapwatch_process_forks_total") == Some(3.0)
        }),
        "the removed cgroup's counts never showed:\n{text}"
    );
}
