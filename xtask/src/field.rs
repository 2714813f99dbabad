//! `cargo xtask bench-field`: `reapwatch serve` on a node in trouble.
//!
//! - **Probes during reconciles.** `reapwatch-bench crowd` makes a node of many processes
//!   and zombies (30 000 and 5 000 by default); `serve` reconciles with `/proc` every second
//!   while `/healthz` and `/metrics` are requested one after the other, each on a new
//!   connection as the kubelet and Prometheus make them. Latency percentiles, against the
//!   same measurement before the crowd exists (the baseline, in the same run), and how busy
//!   the sampler thread was meanwhile.
//! - **More zombies than the maps hold.** 100 000 zombies: how long `serve` takes to be ready,
//!   the count it reports against `/proc`, its map entries and losses, and its memory.
//!
//! `kernel.pid_max` is raised for the run when the crowd needs it, and put back afterwards.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::process;

const PID_MAX: &str = "/proc/sys/kernel/pid_max";
/// How long the probes run in each phase.
const PROBE_WINDOW: Duration = Duration::from_secs(20);

pub fn run(sleepers: usize, zombies: usize, overflow_zombies: usize) -> Result<()> {
    let release = process::release_binaries()?;
    let _pid_max = PidMax::at_least(sleepers.max(overflow_zombies) + zombies + 65536)?;
    let mut report = probe_latency(&release, sleepers, zombies)?;
    if overflow_zombies > 0 {
        report.push_str(&overflow(&release, overflow_zombies)?);
    }
    println!("{report}");
    Ok(())
}

fn probe_latency(release: &Path, sleepers: usize, zombies: usize) -> Result<String> {
    let serve = Serve::start(release, &[])?;
    let idle = Probes::run(&serve, PROBE_WINDOW)?;
    let crowd = Crowd::start(release, sleepers, zombies)?;
    // The crowd's zombies are found by the next reconcile: then every reconcile scans it all.
    serve.wait_for_parent(crowd.pid(), zombies, Duration::from_secs(60))?;
    let busy_before = serve.sampler_cpu_seconds()?;
    let crowded = Probes::run(&serve, PROBE_WINDOW)?;
    let busy = (serve.sampler_cpu_seconds()? - busy_before) / PROBE_WINDOW.as_secs_f64();
    drop(crowd);
    let tasks = sleepers + zombies;
    let mut out = format!(
        "\nprobe latency: {tasks} processes ({sleepers} sleeping, {zombies} zombies), full reconcile \
         every 1 s (sampler thread busy {:.0}% of the {} s window); baseline: the same daemon before \
         the crowd\n",
        busy * 100.0,
        PROBE_WINDOW.as_secs()
    );
    for (path, name) in [("/healthz", "healthz"), ("/metrics", "metrics")] {
        let (base, during) = (idle.of(path), crowded.of(path));
        out.push_str(&format!(
            "  /{name:<8} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms  failed {}/{}  \
             (baseline p99 {:.2} ms; p99 ratio {:.2}; goal p99 < 50 ms: {})\n",
            during.quantile(0.5),
            during.quantile(0.99),
            during.quantile(1.0),
            during.failed,
            during.count(),
            base.quantile(0.99),
            during.quantile(0.99) / base.quantile(0.99),
            if during.quantile(0.99) < 50.0 && during.failed == 0 {
                "met"
            } else {
                "NOT met"
            },
        ));
    }
    Ok(out)
}

fn overflow(release: &Path, zombies: usize) -> Result<String> {
    let crowd = Crowd::start(release, 0, zombies)?;
    let started = Instant::now();
    let serve = Serve::start(release, &[])?;
    let ready_after = started.elapsed();
    let text = serve.wait_for_parent(crowd.pid(), zombies, Duration::from_secs(120))?;
    let counted_after = started.elapsed();
    let in_proc = unreaped_children(crowd.pid());
    let probes = Probes::run(&serve, Duration::from_secs(10))?;
    let (rss, peak) = serve.memory_kib()?;
    let value = |name: &str, label: &str| sample(&text, name, label).unwrap_or(f64::NAN);
    Ok(format!(
        "\n{zombies} zombies of one parent (default map sizes): ready after {:.1} s, all counted \
         after {:.1} s; reapwatch_parent_zombies {} = /proc {in_proc}; zombies map entries {}, \
         map full {}; RSS {:.1} MiB (peak {:.1} MiB); /metrics p99 {:.2} ms, /healthz p99 {:.2} ms, \
         failed {}\n",
        ready_after.as_secs_f64(),
        counted_after.as_secs_f64(),
        value("reapwatch_parent_zombies", &format!("pid=\"{}\"", crowd.pid())),
        value("reapwatch_map_entries", "map=\"zombies\""),
        value("reapwatch_map_full_total", "map=\"zombies\""),
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        probes.of("/metrics").quantile(0.99),
        probes.of("/healthz").quantile(0.99),
        probes.of("/metrics").failed + probes.of("/healthz").failed,
    ))
}

/// Raises `kernel.pid_max` for the run; puts it back when dropped.
struct PidMax(Option<String>);

impl PidMax {
    fn at_least(wanted: usize) -> Result<Self> {
        let before = fs::read_to_string(PID_MAX).context("cannot read kernel.pid_max")?;
        let current: usize = before.trim().parse().context("bad kernel.pid_max")?;
        if current >= wanted {
            return Ok(Self(None));
        }
        // The kernel's ceiling on 64-bit.
        let raised = wanted.min(4_194_304);
        fs::write(PID_MAX, raised.to_string()).context("cannot raise kernel.pid_max")?;
        eprintln!(
            "xtask: kernel.pid_max {} -> {raised} for the run",
            before.trim()
        );
        Ok(Self(Some(before)))
    }
}

impl Drop for PidMax {
    fn drop(&mut self) {
        if let Some(before) = &self.0 {
            let _ = fs::write(PID_MAX, before.trim());
        }
    }
}

/// A running `reapwatch-bench crowd`; lets everything go when dropped.
struct Crowd {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Crowd {
    fn start(release: &Path, sleepers: usize, zombies: usize) -> Result<Self> {
        let mut child = Command::new(release.join("reapwatch-bench"))
            .args(["crowd", &sleepers.to_string(), &zombies.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start reapwatch-bench crowd")?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("piped stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("reapwatch-bench crowd did not start: {:?}", child.wait());
        }
        Ok(Self { child, stdin })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// A running `reapwatch serve` on a free loopback port; stopped when dropped.
pub(crate) struct Serve {
    child: Child,
    url: String,
    /// `reapwatch-bench`, which probes it.
    bench: PathBuf,
}

impl Serve {
    pub(crate) fn start(release: &Path, extra: &[&str]) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(release.join("reapwatch"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--sample-interval", "1s", "--reconcile-interval", "1s"])
            .args(["--log-level", "warn"])
            .args(extra)
            .spawn()
            .context("cannot start reapwatch serve")?;
        let serve = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            bench: release.join("reapwatch-bench"),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while get(&format!("{}/readyz", serve.url)).map(|r| r.0) != Some(200) {
            if Instant::now() > deadline {
                bail!("reapwatch serve did not become ready");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(serve)
    }

    /// One scrape of `/metrics`.
    pub(crate) fn scrape(&self) -> Result<String> {
        match get(&format!("{}/metrics", self.url)) {
            Some((200, text)) => Ok(text),
            other => bail!("scrape of {} failed: {other:?}", self.url),
        }
    }

    /// Waits until `/metrics` counts `zombies` for the parent `pid`; returns that scrape.
    fn wait_for_parent(&self, pid: u32, zombies: usize, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let label = format!("pid=\"{pid}\"");
        loop {
            if let Some((200, text)) = get(&format!("{}/metrics", self.url)) {
                if sample(&text, "reapwatch_parent_zombies", &label) == Some(zombies as f64) {
                    return Ok(text);
                }
            }
            if Instant::now() > deadline {
                bail!("reapwatch serve never counted {zombies} zombies of {pid}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// CPU time of the sampler thread so far.
    fn sampler_cpu_seconds(&self) -> Result<f64> {
        let pid = self.child.id();
        for task in fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
            if fs::read_to_string(task.path().join("comm"))?.trim() != "sampler" {
                continue;
            }
            let stat = fs::read_to_string(task.path().join("stat"))?;
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .context("malformed stat")?
                .1
                .split_whitespace()
                .collect();
            // utime and stime, fields 14 and 15, in USER_HZ ticks (100 on Linux).
            let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
            return Ok(ticks / 100.0);
        }
        bail!("reapwatch serve has no sampler thread")
    }

    /// `(VmRSS, VmHWM)` in KiB.
    fn memory_kib(&self) -> Result<(u64, u64)> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .with_context(|| format!("no {name} in status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Latencies of requests to each path, in milliseconds.
struct Probes {
    by_path: Vec<(&'static str, Latencies)>,
}

#[derive(Default)]
struct Latencies {
    ms: Vec<f64>,
    failed: usize,
}

impl Latencies {
    fn count(&self) -> usize {
        self.ms.len() + self.failed
    }

    /// Nearest rank; a failed request counts as the slowest.
    fn quantile(&self, q: f64) -> f64 {
        let mut ms = self.ms.clone();
        ms.extend(std::iter::repeat_n(f64::INFINITY, self.failed));
        if ms.is_empty() {
            return f64::NAN;
        }
        ms.sort_by(f64::total_cmp);
        ms[((ms.len() - 1) as f64 * q).round() as usize]
    }
}

impl Probes {
    /// Probes from `reapwatch-bench probe`, an optimised build, so that the client's own
    /// parsing does not weigh in the numbers.
    fn run(serve: &Serve, window: Duration) -> Result<Self> {
        let output = process::output(Command::new(&serve.bench).args([
            "probe",
            &serve.url,
            &window.as_secs().to_string(),
        ]))?;
        let mut by_path = vec![
            ("/healthz", Latencies::default()),
            ("/metrics", Latencies::default()),
        ];
        for line in output.lines() {
            let Some((path, result)) = line.split_once(' ') else {
                continue;
            };
            let Some((_, latencies)) = by_path.iter_mut().find(|(p, _)| *p == path) else {
                continue;
            };
            match result.parse() {
                Ok(ms) => latencies.ms.push(ms),
                Err(_) => latencies.failed += 1,
            }
        }
        Ok(Self { by_path })
    }

    fn of(&self, path: &str) -> &Latencies {
        &self
            .by_path
            .iter()
            .find(|(p, _)| *p == path)
            .expect("a probed path")
            .1
    }
}

/// `(status, body)` of a GET, None if it failed.
fn get(url: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .max_idle_connections(0)
        .build()
        .into();
    let mut response = agent.get(url).call().ok()?;
    let status = response.status().as_u16();
    Some((status, response.body_mut().read_to_string().ok()?))
}

/// The value of the sample `name` whose labels contain `label` (`key="value"`).
fn sample(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| l.contains(label))
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

/// Unreaped children of `ppid` in `/proc`: the ground truth.
fn unreaped_children(ppid: u32) -> usize {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let Some((_, tail)) = stat.rsplit_once(')') else {
                return false;
            };
            let fields: Vec<&str> = tail.split_whitespace().collect();
            fields.first() == Some(&"Z")
                && fields.get(1) == Some(&ppid.to_string().as_str())
                && fields.get(17) == Some(&"1")
        })
        .count()
}
