//! `cargo xtask bench`: what the tracer costs the workloads it watches.
//!
//! Two workloads, each timed inside `reapwatch-bench` (no process start-up in the numbers):
//! a fork/exit/wait storm (each of the four hooks fires once per round trip) and a pipe
//! ping-pong between two processes on one CPU (two context switches per round trip, which
//! cost every tracer that hooks `sched_switch`; reapwatch does not, and runs nothing there). The tracer runs as a separate resident process (`reapwatch-bench hold`:
//! the library's loader and state engine, refreshed every second like an agent), so the
//! workload's numbers include only what the kernel programs and the agent's CPU use cost it.
//!
//! The machine is shared and noisy: samples come in pairs, off and on back to back in
//! alternating order, and the overhead is the median over pairs of the per-pair change. Each
//! sample gives the workload's CPU time (user + system of its processes), which other load
//! on the machine moves less, and its elapsed time. bpftrace and libbpf-tools' exitsnoop are
//! measured the same way.
//!
//! Last, with the kernel's BPF run-time statistics on, the time spent inside reapwatch's
//! programs per round trip: the direct cost, which the machine's noise does not blur. The
//! statistics read the clock around every run, which is slow on this virtual machine;
//! the same programs attached unconfigured (each returns at once), measured over the same
//! runs, give that baseline, and the net figure is the difference. It leaves out the
//! tracepoint's dispatch, a few ns per run.
//!
//! The programs' rare-event log (aya-log, forwarded at debug level) must cost nothing while
//! nothing unusual happens: the same pairs are measured again with it attached, each pair
//! against its own baseline, and the records it emitted are counted (expected 0).

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::process::{self, workspace_root};

const STORM_ROUND_TRIPS: u64 = 1000;
const PINGPONG_ROUND_TRIPS: u64 = 10000;

/// A comparison: the usual way to watch exit -> reap per process with bpftrace.
const BPFTRACE_EXIT_FREE: &str = "\
tracepoint:sched:sched_process_exit { @exit[args->pid] = nsecs; }
tracepoint:sched:sched_process_free /@exit[args->pid]/ {
  @exit_to_free_ns = hist(nsecs - @exit[args->pid]); delete(@exit[args->pid]);
}";

const EXITSNOOP: &str = "/usr/sbin/exitsnoop";

#[derive(Clone, Copy, PartialEq)]
enum Tracer {
    Reapwatch,
    /// reapwatch logging at debug level: the programs' log attached and forwarded.
    ReapwatchLogged,
    /// reapwatch's programs attached unconfigured: each returns at its first check.
    Unconfigured,
    Bpftrace,
    Exitsnoop,
}

impl Tracer {
    /// One of ours (`reapwatch-bench hold`), which answers `stats` and reports its footprint.
    fn is_reapwatch(self) -> bool {
        matches!(
            self,
            Self::Reapwatch | Self::ReapwatchLogged | Self::Unconfigured
        )
    }

    fn name(self) -> &'static str {
        match self {
            Self::Reapwatch => "reapwatch",
            Self::ReapwatchLogged => "reapwatch, kernel log forwarded",
            Self::Unconfigured => "reapwatch's programs, unconfigured",
            Self::Bpftrace => "bpftrace exit->free script",
            Self::Exitsnoop => "libbpf-tools exitsnoop",
        }
    }
}

/// A running tracer, stopped on drop.
struct Running {
    tracer: Tracer,
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
}

/// What `reapwatch-bench hold` reports when it stops.
#[derive(Default, Clone, Copy)]
struct Footprint {
    rss_kib: u64,
    map_bytes: u64,
    prog_bytes: u64,
    /// Records the programs logged.
    kernel_log_records: u64,
}

impl Running {
    fn start(tracer: Tracer, bench: &Path) -> Result<Self> {
        Self::start_with(tracer, bench, false)
    }

    /// `stats`: reapwatch with the kernel's BPF run-time statistics on.
    fn start_with(tracer: Tracer, bench: &Path, stats: bool) -> Result<Self> {
        let mut cmd = match tracer {
            Tracer::Reapwatch | Tracer::ReapwatchLogged | Tracer::Unconfigured => {
                let mut cmd = Command::new(bench);
                cmd.arg("hold");
                if stats {
                    cmd.arg("stats");
                }
                if tracer == Tracer::Unconfigured {
                    cmd.arg("idle");
                }
                if tracer == Tracer::ReapwatchLogged {
                    cmd.arg("log");
                }
                cmd
            }
            Tracer::Bpftrace => {
                let mut cmd = Command::new("bpftrace");
                cmd.args(["-e", BPFTRACE_EXIT_FREE]);
                cmd
            }
            Tracer::Exitsnoop => {
                // Line-buffered: piped, its stdio holds the header back until 4 KiB of events,
                // which a quiet machine may take minutes to produce.
                let mut cmd = Command::new("stdbuf");
                cmd.args(["-oL", EXITSNOOP]);
                cmd
            }
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", tracer.name()))?;
        let mut stdout = BufReader::new(child.stdout.take().context("piped stdout")?);
        // Each says when its programs are attached: our `ready`, bpftrace's "Attaching N
        // probes...", exitsnoop's column header.
        let ready = |line: &str| match tracer {
            Tracer::Reapwatch | Tracer::ReapwatchLogged | Tracer::Unconfigured => line == "ready",
            Tracer::Bpftrace => line.starts_with("Attaching"),
            Tracer::Exitsnoop => line.contains("PID"),
        };
        let mut line = String::new();
        loop {
            line.clear();
            if stdout.read_line(&mut line)? == 0 {
                let status = child.wait()?;
                bail!("{} ended before it was ready ({status})", tracer.name());
            }
            if ready(line.trim()) {
                break;
            }
        }
        let stdout = if tracer.is_reapwatch() {
            Some(stdout)
        } else {
            // Their output is one line per event: drain it so they never block on a pipe.
            std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
            None
        };
        Ok(Self {
            tracer,
            child,
            stdout,
        })
    }

    /// Time spent in reapwatch's programs so far, and their runs.
    fn program_stats(&mut self) -> Result<(u64, u64)> {
        let stdin = self.child.stdin.as_mut().context("holder stdin")?;
        writeln!(stdin, "stats")?;
        let stdout = self.stdout.as_mut().context("holder stdout")?;
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        Ok((field(&line, "run_ns")?, field(&line, "run_cnt")?))
    }

    /// Stops the tracer; reapwatch reports its footprint.
    fn stop(mut self) -> Result<Footprint> {
        let Some(stdout) = self.stdout.as_mut() else {
            return Ok(Footprint::default());
        };
        drop(self.child.stdin.take());
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        Ok(Footprint {
            rss_kib: field(&line, "rss_kib")?,
            map_bytes: field(&line, "map_bytes")?,
            prog_bytes: field(&line, "prog_bytes")?,
            kernel_log_records: field(&line, "kernel_log_records")?,
        })
    }
}

/// The number after `key` in a `key value key value` line.
fn field(line: &str, key: &str) -> Result<u64> {
    let mut words = line.split_whitespace();
    words
        .position(|w| w == key)
        .and_then(|_| words.next()?.parse().ok())
        .with_context(|| format!("no {key} in the holder's report {line:?}"))
}

/// Rounds of each workload measured with statistics on.
const STATS_ROUNDS: u64 = 5;

/// Time inside programs per round trip of one workload.
#[derive(Clone, Copy)]
struct ProgramCost {
    /// ns inside reapwatch's programs, statistics' own cost included.
    ns: f64,
    /// ns inside the unconfigured programs on the same tracepoints, in the same workload
    /// runs: what the statistics add to a run, plus entering a program at all.
    baseline_ns: f64,
    /// Program runs.
    runs: f64,
}

impl ProgramCost {
    /// What reapwatch's work in its programs costs.
    fn net_ns(&self) -> f64 {
        (self.ns - self.baseline_ns).max(0.0)
    }
}

/// In-program time per round trip of (storm, ping-pong). Both holders run at once, so every
/// workload run is measured for both.
fn program_cost(bench: &Path) -> Result<[ProgramCost; 2]> {
    let mut running = Running::start_with(Tracer::Reapwatch, bench, true)?;
    let mut baseline = Running::start_with(Tracer::Unconfigured, bench, true)?;
    // Per workload: (ns, runs) of reapwatch, ns of the baseline.
    let mut totals = [(0u64, 0u64, 0u64); 2];
    for _ in 0..STATS_ROUNDS {
        for (i, (name, round_trips)) in [
            ("storm", STORM_ROUND_TRIPS),
            ("pingpong", PINGPONG_ROUND_TRIPS),
        ]
        .into_iter()
        .enumerate()
        {
            let (before, baseline_before) = (running.program_stats()?, baseline.program_stats()?);
            workload(bench, name, round_trips)?;
            let (after, baseline_after) = (running.program_stats()?, baseline.program_stats()?);
            totals[i].0 += after.0 - before.0;
            totals[i].1 += after.1 - before.1;
            totals[i].2 += baseline_after.0 - baseline_before.0;
        }
    }
    running.stop()?;
    baseline.stop()?;
    let per_trip = |(ns, runs, baseline_ns): (u64, u64, u64), round_trips: u64| {
        let n = (STATS_ROUNDS * round_trips) as f64;
        ProgramCost {
            ns: ns as f64 / n,
            baseline_ns: baseline_ns as f64 / n,
            runs: runs as f64 / n,
        }
    };
    Ok([
        per_trip(totals[0], STORM_ROUND_TRIPS),
        per_trip(totals[1], PINGPONG_ROUND_TRIPS),
    ])
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.tracer.is_reapwatch() {
            drop(self.child.stdin.take());
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU and wall nanoseconds per round trip of one workload run.
fn workload(bench: &Path, name: &str, round_trips: u64) -> Result<Timing> {
    let text = process::output(Command::new(bench).args([name, &round_trips.to_string()]))?;
    let value = |key: &str| -> Result<f64> {
        let mut words = text.split_whitespace();
        words
            .position(|w| w == key)
            .and_then(|_| words.next()?.parse::<f64>().ok())
            .map(|total| total / round_trips as f64)
            .with_context(|| format!("{name}: no {key} in {text:?}"))
    };
    Ok(Timing {
        cpu: value("cpu_ns")?,
        wall: value("wall_ns")?,
    })
}

#[derive(Default, Clone, Copy)]
struct Timing {
    cpu: f64,
    wall: f64,
}

/// Per pair, (off, on) of each workload.
#[derive(Default)]
struct Samples {
    storm: Vec<(Timing, Timing)>,
    pingpong: Vec<(Timing, Timing)>,
    footprint: Footprint,
}

fn measure(tracer: Tracer, pairs: usize, bench: &Path) -> Result<Samples> {
    let mut samples = Samples::default();
    for pair in 0..pairs {
        eprint!(
            "\rxtask: bench {}: pair {}/{pairs}",
            tracer.name(),
            pair + 1
        );
        let _ = std::io::stderr().flush();
        let mut off = (Timing::default(), Timing::default());
        let mut on = off;
        // Alternate which half goes first, so that drift in the machine's load cancels out.
        for tracing in [pair % 2 == 0, pair % 2 != 0] {
            let running = tracing.then(|| Running::start(tracer, bench)).transpose()?;
            let storm = workload(bench, "storm", STORM_ROUND_TRIPS)?;
            let pingpong = workload(bench, "pingpong", PINGPONG_ROUND_TRIPS)?;
            match running {
                Some(running) => {
                    let footprint = running.stop()?;
                    samples.footprint.rss_kib = samples.footprint.rss_kib.max(footprint.rss_kib);
                    samples.footprint.map_bytes = footprint.map_bytes;
                    samples.footprint.prog_bytes = footprint.prog_bytes;
                    samples.footprint.kernel_log_records += footprint.kernel_log_records;
                    on = (storm, pingpong);
                }
                None => off = (storm, pingpong),
            }
        }
        samples.storm.push((off.0, on.0));
        samples.pingpong.push((off.1, on.1));
    }
    eprintln!();
    Ok(samples)
}

fn quantile(values: &mut [f64], q: f64) -> f64 {
    // Nearest rank: one of the measured values, no interpolation.
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// Median of the per-pair changes, as a ratio and in ns per round trip, with the spread.
struct Overhead {
    off_ns: f64,
    on_ns: f64,
    ratio: f64,
    ratio_p25: f64,
    ratio_p75: f64,
    delta_ns: f64,
}

impl Overhead {
    fn of(samples: &[(Timing, Timing)], metric: fn(&Timing) -> f64) -> Self {
        let pairs: Vec<(f64, f64)> = samples
            .iter()
            .map(|(off, on)| (metric(off), metric(on)))
            .collect();
        let mut ratios: Vec<f64> = pairs.iter().map(|(off, on)| on / off - 1.0).collect();
        let mut deltas: Vec<f64> = pairs.iter().map(|(off, on)| on - off).collect();
        let mut offs: Vec<f64> = pairs.iter().map(|p| p.0).collect();
        let mut ons: Vec<f64> = pairs.iter().map(|p| p.1).collect();
        Self {
            off_ns: quantile(&mut offs, 0.5),
            on_ns: quantile(&mut ons, 0.5),
            ratio: quantile(&mut ratios, 0.5),
            ratio_p25: quantile(&mut ratios, 0.25),
            ratio_p75: quantile(&mut ratios, 0.75),
            delta_ns: quantile(&mut deltas, 0.5),
        }
    }

    fn line(&self, label: &str) -> String {
        format!(
            "  {label:<27} off {:>7.0} ns  on {:>7.0} ns  {:>+6.2}% (p25..p75 {:+.2}%..{:+.2}%)  {:>+6.0} ns/round trip",
            self.off_ns,
            self.on_ns,
            self.ratio * 100.0,
            self.ratio_p25 * 100.0,
            self.ratio_p75 * 100.0,
            self.delta_ns,
        )
    }
}

fn workload_lines(samples: &Samples) -> String {
    let mut lines = String::new();
    for (label, pairs) in [
        ("fork+exit+wait storm", &samples.storm),
        ("pipe ping-pong", &samples.pingpong),
    ] {
        lines.push_str(&Overhead::of(pairs, |t| t.cpu).line(&format!("{label}, CPU")));
        lines.push('\n');
        lines.push_str(&Overhead::of(pairs, |t| t.wall).line(&format!("{label}, wall")));
        lines.push('\n');
    }
    lines
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

pub fn run(pairs: usize, compare_pairs: usize) -> Result<()> {
    if pairs == 0 {
        bail!("--pairs must be at least 1");
    }
    process::cargo(
        None,
        &[
            "build",
            "--release",
            "--package",
            "reapwatch-tests",
            "--bin",
            "reapwatch-bench",
        ],
    )?;
    let bench: PathBuf = workspace_root().join("target/release/reapwatch-bench");

    let samples = measure(Tracer::Reapwatch, pairs, &bench)?;
    let storm_cpu = Overhead::of(&samples.storm, |t| t.cpu);
    let pingpong_cpu = Overhead::of(&samples.pingpong, |t| t.cpu);
    let [storm_programs, pingpong_programs] = program_cost(&bench)?;
    let mut report = format!(
        "\nreapwatch overhead: {pairs} interleaved off/on pairs, medians over pairs \
         ({STORM_ROUND_TRIPS} fork+exit+wait or {PINGPONG_ROUND_TRIPS} ping-pong round trips per sample)\n"
    );
    report.push_str(&workload_lines(&samples));
    for (label, cost, off) in [
        ("fork+exit+wait storm", storm_programs, &storm_cpu),
        ("pipe ping-pong", pingpong_programs, &pingpong_cpu),
    ] {
        report.push_str(&format!(
            "  {label:<22} in reapwatch's programs: {:>6.0} ns/round trip ({:.1} runs), \
             less {:.0} ns that the same runs of unconfigured programs take: \
             {:.0} ns, {:.2}% of its CPU time off\n",
            cost.ns,
            cost.runs,
            cost.baseline_ns,
            cost.net_ns(),
            cost.net_ns() / off.off_ns * 100.0
        ));
    }
    // The programs' own time is the stable figure; the pairs' medians bound it from above
    // only on a quiet machine.
    let storm_ratio = storm_programs.net_ns() / storm_cpu.off_ns;
    report.push_str(&format!(
        "  targets, on the programs' net time: storm <1% {} and <500 ns {}, ping-pong <2% {}\n",
        verdict(storm_ratio < 0.01),
        verdict(storm_programs.net_ns() < 500.0),
        verdict(pingpong_programs.net_ns() / pingpong_cpu.off_ns < 0.02),
    ));
    let f = samples.footprint;
    report.push_str(&format!(
        "  tracer peak RSS {:.1} MiB (target <40 MiB: {}); kernel memory: maps {:.1} MiB, programs {:.0} KiB\n",
        f.rss_kib as f64 / 1024.0,
        verdict(f.rss_kib < 40 * 1024),
        f.map_bytes as f64 / (1024.0 * 1024.0),
        f.prog_bytes as f64 / 1024.0,
    ));

    // The rare-event log, attached: the same pairs again, each ratio against its own baseline.
    let logged = measure(Tracer::ReapwatchLogged, pairs, &bench)?;
    let logged_storm_cpu = Overhead::of(&logged.storm, |t| t.cpu);
    let logged_pingpong_cpu = Overhead::of(&logged.pingpong, |t| t.cpu);
    let records = logged.footprint.kernel_log_records;
    report.push_str(&format!(
        "  kernel log forwarded ({pairs} more pairs): storm CPU {:+.2}% (without it {:+.2}%), \
         ping-pong CPU {:+.2}% (without it {:+.2}%); records the programs logged: {records} \
         (expected 0: {})\n",
        logged_storm_cpu.ratio * 100.0,
        storm_cpu.ratio * 100.0,
        logged_pingpong_cpu.ratio * 100.0,
        pingpong_cpu.ratio * 100.0,
        verdict(records == 0),
    ));

    if compare_pairs > 0 {
        report.push_str(&format!("for comparison, {compare_pairs} pairs each:\n"));
        for other in [Tracer::Bpftrace, Tracer::Exitsnoop] {
            match measure(other, compare_pairs, &bench) {
                Ok(samples) => {
                    report.push_str(&format!("  {}:\n", other.name()));
                    report.push_str(&workload_lines(&samples));
                }
                Err(err) => {
                    report.push_str(&format!("  {}: not measured: {err:#}\n", other.name()))
                }
            }
        }
    }
    print!("{report}");
    Ok(())
}
