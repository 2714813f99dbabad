//! Scrape cost on a node with many containers: 500 cgroups, each with a parent holding an
//! unreaped child, under a running `reapwatch serve`. Prints the median time of a `/metrics`
//! scrape and, as the baseline measured in the same run, of a `/healthz` request (same
//! connection handling, no metrics work), interleaved.
//!
//!     cargo build --release --workspace --exclude tracer-ebpf --bins
//!     cargo bench -p reapwatch-tests --bench scrape

use std::time::{Duration, Instant};

use reapwatch_tests::{eventually, sample_value, Daemon, Helper, TestCgroup};

const CONTAINERS: usize = 500;
const ROUNDS: usize = 60;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let daemon = Daemon::start(&["--top-parents", "20"]);
    let cgroups: Vec<TestCgroup> = (0..CONTAINERS)
        .map(|i| TestCgroup::new(&format!("bench-{i}")))
        .collect();
    let helpers: Vec<Helper> = cgroups
        .iter()
        .map(|c| Helper::start("leak", 1, c))
        .collect();
    let settled = eventually(Duration::from_secs(60), || {
        sample_value(&daemon.scrape(), "reapwatch_node_zombies", &[]).unwrap_or(0.0)
            >= CONTAINERS as f64
    });
    assert!(settled, "the daemon never saw {CONTAINERS} zombies");
    let series = daemon
        .scrape()
        .lines()
        .filter(|l| l.starts_with("reapwatch_zombies{"))
        .count();

    let (mut scrapes, mut baseline) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let start = Instant::now();
        daemon.get("/healthz").expect("healthz");
        baseline.push(start.elapsed());
        let start = Instant::now();
        let (status, body) = daemon.get("/metrics").expect("metrics");
        scrapes.push(start.elapsed());
        assert!(status == 200 && !body.is_empty());
    }
    let (scrape, base) = (median(scrapes), median(baseline));
    println!(
        "cgroups exported: {series} (target: a scrape of {CONTAINERS} containers under 20 ms)"
    );
    println!("/metrics median: {:.2} ms", scrape.as_secs_f64() * 1e3);
    println!(
        "/healthz median: {:.2} ms (baseline)",
        base.as_secs_f64() * 1e3
    );
    println!(
        "ratio: {:.1}x the baseline",
        scrape.as_secs_f64() / base.as_secs_f64()
    );
    drop(helpers);
}
