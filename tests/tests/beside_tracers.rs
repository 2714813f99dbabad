//! reapwatch beside other eBPF agents on the same sched tracepoints: libbpf-tools'
//! `exitsnoop` and a bpftrace script that tracks exit -> free per process. Nodes run several
//! such agents; none of them may make reapwatch miss a zombie or invent one.
//!
//! Exactness is asserted through the state engine (`refresh`), as a deployment reads it: on
//! 6.18 with tracing programs on the sched tracepoints some `sched_process_free` events never
//! fire, and the engine closes those records from `/proc`.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use reapwatch::{kernel::MapSizes, state::StateEngine};
use reapwatch_tests::{eventually, load_engine, proc_unreaped_children, Helper, TestCgroup};
use tracer_common::CgroupCounters;

const ROUND_TRIPS: u64 = 5000;
const LEAKED: usize = 5;

/// Attached to every sched tracepoint reapwatch uses; prints one line per process exit so
/// the test can tell it really ran.
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:sched:sched_process_fork { @forks = count(); }
tracepoint:sched:sched_process_exit { @exit[args->pid] = nsecs; printf("exit %s\n", comm); }
tracepoint:sched:sched_process_wait { @waits = count(); }
tracepoint:sched:sched_switch { @switches = count(); }
tracepoint:sched:sched_process_free /@exit[args->pid]/ {
  @exit_to_free_ns = hist(nsecs - @exit[args->pid]); delete(@exit[args->pid]);
}
"#;

/// Another tracer, attached and running until dropped.
struct OtherTracer {
    name: &'static str,
    child: Child,
    /// Output lines that name the zombie helper: proof it saw the workload.
    helper_lines: Arc<AtomicU64>,
}

impl OtherTracer {
    /// Starts `cmd` and waits for the line saying its programs are attached.
    fn start(
        name: &'static str,
        cmd: &mut Command,
        ready: impl Fn(&str) -> bool + Send + 'static,
    ) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let collected = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err_pipe.read_to_string(&mut text);
            collected.lock().unwrap().push_str(&text);
        });
        // Read on a thread, so that a tracer that never reports ready fails the test in
        // bounded time instead of hanging it.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let counter_lines = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&counter_lines);
        std::thread::spawn(move || {
            let mut attached = false;
            for line in lines.by_ref().map_while(Result::ok) {
                if !attached && ready(&line) {
                    attached = true;
                    let _ = ready_tx.send(());
                } else if attached && line.contains("zombie-helper") {
                    // Drained continuously: a tracer blocked on a full pipe stops consuming.
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let status = child.try_wait().ok().flatten();
            let _ = child.kill();
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "{name} did not report its programs attached within 60 s ({status:?}): {}",
                stderr.lock().unwrap()
            );
        }
        let helper_lines = counter_lines;
        Self {
            name,
            child,
            helper_lines,
        }
    }

    fn assert_running(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(None)),
            "{} stopped during the test",
            self.name
        );
    }
}

impl Drop for OtherTracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn counters(engine: &mut StateEngine, cgroup: &TestCgroup) -> CgroupCounters {
    engine.refresh().expect("refresh");
    engine
        .cgroups()
        .expect("counters")
        .iter()
        .find(|c| c.id == cgroup.id())
        .map(|c| c.counters)
        .unwrap_or_default()
}

fn traced_children(engine: &mut StateEngine, parent: u32) -> Vec<(u32, bool)> {
    engine.refresh().expect("refresh");
    let mut children: Vec<(u32, bool)> = engine
        .parents()
        .expect("parents")
        .into_iter()
        .filter(|p| p.pid() == parent)
        .flat_map(|p| p.children)
        .map(|c| (c.pid(), c.age_is_lower_bound()))
        .collect();
    children.sort();
    children
}

#[test]
fn storm_and_leaks_are_exact_beside_exitsnoop_and_bpftrace() {
    let mut exitsnoop = OtherTracer::start(
        "exitsnoop",
        // Line-buffered: piped, its stdio would hold the header back until 4 KiB of events.
        Command::new("stdbuf").args(["-oL", "/usr/sbin/exitsnoop"]),
        // The column header comes once the programs are attached.
        |line| line.contains("PID"),
    );
    let mut bpftrace = OtherTracer::start(
        "bpftrace",
        Command::new("stdbuf").args(["-oL", "bpftrace", "-e", BPFTRACE_SCRIPT]),
        |line| line.starts_with("Attaching"),
    );
    // Loaded after the others, never reconciled: everything it reports, its programs saw.
    let mut engine = load_engine(MapSizes::default());

    // Every round trip makes a zombie that is reaped at once: all counted, none left.
    let storm_cgroup = TestCgroup::new("beside-storm");
    let storm = Helper::start("storm", ROUND_TRIPS as u32, &storm_cgroup);
    let settled = eventually(Duration::from_secs(20), || {
        counters(&mut engine, &storm_cgroup).zombies_reaped >= ROUND_TRIPS
    });
    let c = counters(&mut engine, &storm_cgroup);
    assert!(settled, "{c:?}");
    assert_eq!(
        (c.forks, c.exits, c.zombies_created, c.zombies_reaped),
        (ROUND_TRIPS, ROUND_TRIPS, ROUND_TRIPS, ROUND_TRIPS),
        "{c:?}"
    );
    assert_eq!(
        traced_children(&mut engine, storm.parent),
        [],
        "phantom zombies of the storm"
    );

    // Children that exit unreaped: exactly those, seen as they exited.
    let leak_cgroup = TestCgroup::new("beside-leak");
    let leak = Helper::start("leak", LEAKED as u32, &leak_cgroup);
    let truth: Vec<(u32, bool)> = proc_unreaped_children(leak.parent)
        .keys()
        .map(|&pid| (pid, false))
        .collect();
    assert_eq!(truth.len(), LEAKED);
    let agreed = eventually(Duration::from_secs(10), || {
        traced_children(&mut engine, leak.parent) == truth
    });
    assert!(
        agreed,
        "/proc: {truth:?}, tracer: {:?}",
        traced_children(&mut engine, leak.parent)
    );
    let c = counters(&mut engine, &leak_cgroup);
    assert_eq!(
        (c.forks, c.zombies_created, c.zombies_reaped),
        (LEAKED as u64, LEAKED as u64, 0),
        "{c:?}"
    );

    // The other tracers were really there and busy the whole time. Not every exit: their
    // per-event buffers may drop some in a storm (exitsnoop does, and says "lost").
    for other in [&mut exitsnoop, &mut bpftrace] {
        other.assert_running();
        let saw = eventually(Duration::from_secs(10), || {
            other.helper_lines.load(Ordering::Relaxed) >= ROUND_TRIPS / 2
        });
        assert!(
            saw,
            "{} reported only {} exits of the helper",
            other.name,
            other.helper_lines.load(Ordering::Relaxed)
        );
    }
    assert_eq!(
        engine.probes().losses().unwrap(),
        [0; tracer_common::LOSS_KINDS as usize]
    );
}
