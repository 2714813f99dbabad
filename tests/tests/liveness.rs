//! `/healthz` of `reapwatch serve`: it fails when the sampler thread is dead or has made no
//! progress for far longer than a full reconcile takes, and never for a slow one.

use std::{
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use reapwatch_tests::{eventually, thread_named, Daemon, Helper, StoppedThread, TestCgroup};

/// One test at a time: the crowd of zombies one makes slows every other daemon's scans.
fn alone() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

fn healthz(daemon: &Daemon) -> Option<(u16, String)> {
    daemon.get("/healthz")
}

/// The sampler thread ends (here: made to call exit() on its own): nothing samples the node
/// any more, so the kubelet must restart the pod.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_dead_sampler_fails_liveness() {
    let _alone = alone();
    let daemon = Daemon::start(&[]);
    assert_eq!(healthz(&daemon).map(|r| r.0), Some(200));
    let sampler = thread_named(daemon.pid(), "sampler").expect("sampling has a thread of its own");
    reapwatch_tests::end_thread(sampler);
    let mut answer = None;
    let failed = eventually(Duration::from_secs(5), || {
        answer = healthz(&daemon);
        answer.as_ref().is_some_and(|(status, _)| *status == 503)
    });
    assert!(failed, "{answer:?}");
    assert!(answer.unwrap().1.contains("sampler"));
}

/// A sampler stopped for longer than --liveness-timeout fails liveness, and passes again once
/// it moves; stopped for less, it only fails readiness.
#[test]
fn a_stuck_sampler_fails_liveness_after_the_timeout() {
    let _alone = alone();
    let daemon = Daemon::start(&["--liveness-timeout", "3s"]);
    let sampler = thread_named(daemon.pid(), "sampler").expect("sampling has a thread of its own");
    let stalled = StoppedThread::stop(sampler);
    let stopped_at = Instant::now();
    let mut answer = None;
    let failed = eventually(Duration::from_secs(10), || {
        answer = healthz(&daemon);
        answer.as_ref().is_some_and(|(status, _)| *status == 503)
    });
    let after = stopped_at.elapsed();
    assert!(failed, "{answer:?}");
    assert!(answer.unwrap().1.contains("no progress"));
    // Not before the timeout (the last sample was at most one interval before the stop).
    assert!(
        after >= Duration::from_millis(2800),
        "failed after {after:?}"
    );
    drop(stalled);
    assert!(eventually(Duration::from_secs(5), || healthz(&daemon)
        .is_some_and(|(status, _)| status == 200)));
}

/// The first sample is a full reconcile; with many zombies it takes far longer than the stale
/// window (three 200 ms intervals here): readiness waits for it, liveness never fails. (The
/// next full scan is an hour away, so that the samples after it are quick and it is ready.)
#[test]
fn a_slow_first_reconcile_does_not_fail_liveness() {
    let _alone = alone();
    let cgroup = TestCgroup::new("liveness-crowd");
    let _crowd = Helper::start("leak", 8000, &cgroup);
    let started = Instant::now();
    let daemon = Daemon::spawn(&[], &["--reconcile-interval", "1h"]);
    let (mut probes, mut unready) = (0, 0);
    let ready = eventually(Duration::from_secs(120), || {
        if let Some((status, body)) = healthz(&daemon) {
            assert_eq!(status, 200, "liveness failed while loading: {body}");
            probes += 1;
        }
        let ready = daemon
            .get("/readyz")
            .is_some_and(|(status, _)| status == 200);
        unready += u32::from(!ready);
        ready
    });
    assert!(ready, "never ready");
    let took = started.elapsed();
    // Slower than the stale window by far, probed all along.
    assert!(took > Duration::from_secs(1), "ready after {took:?}");
    assert!(
        probes > 10 && unready > 10,
        "{probes} probes, {unready} unready"
    );
}
