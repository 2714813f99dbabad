//! `reapwatch snapshot`: one look at every parent with unreaped children.

use std::{fmt::Write as _, path::Path};

use anyhow::Result;
use serde::Serialize;
use tracer_common::{Loss, LIFETIME_BUCKETS};

use crate::{
    cli::SnapshotArgs,
    escape,
    kernel::preflight,
    kubernetes::{self, PodDirectory},
    state::{AgeSource, CgroupState, ChildState, ParentState, RepairTotals, StateEngine},
};

pub fn run(args: &SnapshotArgs) -> Result<()> {
    let mut engine = StateEngine::load(
        args.tracer.maps.sizes(),
        Path::new("/proc"),
        Path::new("/sys/fs/cgroup"),
        args.tracer.hierarchy.cgroup_hierarchy,
    )?;
    engine.reconcile()?;
    let mut report = Report::collect(&mut engine)?;
    let mut pods = PodDirectory::new(&args.pods.pod_logs_dir);
    for parent in &mut report.parents {
        parent.name_container(&mut pods);
    }
    if args.json {
        let mut text = serde_json::to_string_pretty(&report)?;
        text.push('\n');
        super::emit(&text)
    } else {
        super::emit(&report.table())
    }
}

/// The `snapshot --json` document. Field names are a public contract: add, never rename.
#[derive(Serialize)]
pub struct Report {
    pub parents: Vec<ParentReport>,
    pub cgroups: Vec<CgroupReport>,
    pub zombie_lifetime: LifetimeReport,
    pub tracer: TracerReport,
}

#[derive(Serialize)]
pub struct ParentReport {
    pub pid: u32,
    pub comm: String,
    pub cgroup: Option<String>,
    /// Kubernetes names of the cgroup's pod and container (`--pod-logs-dir`); null outside
    /// Kubernetes or when kubelet's logs do not name them.
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub unreaped: usize,
    pub oldest_age_seconds: f64,
    pub oldest_age_is_lower_bound: bool,
    /// Where the oldest age comes from: `exit`, `scheduler` or `first_seen` (a lower bound).
    pub oldest_age_source: Option<AgeSource>,
    /// Seconds since it last entered `wait()`; null: no wait seen in the watch (see
    /// `last_wait_watched_seconds`), or not watched at all.
    pub last_wait_age_seconds: Option<f64>,
    /// How long `wait()` calls were watched; null: not watched (no eBPF).
    pub last_wait_watched_seconds: Option<f64>,
    /// `scan --watch`: net change of its unreaped children per minute over the watch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth_per_minute: Option<f64>,
    pub children: Vec<ChildReport>,
}

#[derive(Serialize)]
pub struct ChildReport {
    pub pid: u32,
    pub comm: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub exit_signal: i32,
    pub age_seconds: f64,
    pub age_is_lower_bound: bool,
    pub age_source: AgeSource,
}

#[derive(Serialize)]
pub struct CgroupReport {
    pub id: u64,
    pub path: Option<String>,
    pub forks: u64,
    pub exits: u64,
    pub zombies_created: u64,
    pub zombies_reaped: u64,
}

#[derive(Serialize)]
pub struct LifetimeReport {
    pub count: u64,
    pub sum_seconds: f64,
    /// Cumulative counts, as a Prometheus histogram: lifetimes of at most `le_seconds`.
    pub buckets: Vec<BucketReport>,
}

#[derive(Serialize)]
pub struct BucketReport {
    pub le_seconds: f64,
    pub count: u64,
}

#[derive(Serialize)]
pub struct TracerReport {
    pub kernel: String,
    pub hooks: Vec<HookReport>,
    pub losses: LossReport,
    pub repairs: RepairTotals,
}

#[derive(Serialize)]
pub struct HookReport {
    pub program: String,
    pub attach: String,
    pub recursion_misses: u64,
}

#[derive(Serialize)]
pub struct LossReport {
    pub zombies_map_full: u64,
    pub cgroups_map_full: u64,
    pub waits_map_full: u64,
    pub kernel_read_errors: u64,
    pub events_dropped: u64,
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl ChildReport {
    fn from_state(child: &ChildState) -> Self {
        Self {
            pid: child.pid(),
            comm: escape::lossy(child.comm()),
            exit_code: child.exit_code(),
            signal: child.killed_by(),
            exit_signal: child.zombie.exit_signal,
            age_seconds: seconds(child.age_ns),
            age_is_lower_bound: child.age_is_lower_bound(),
            age_source: child.age_source(),
        }
    }
}

impl ParentReport {
    pub fn from_state(parent: &ParentState) -> Self {
        let oldest = parent.oldest();
        Self {
            pid: parent.pid(),
            comm: escape::lossy(&parent.comm),
            cgroup: parent.cgroup.clone(),
            namespace: None,
            pod: None,
            container: None,
            unreaped: parent.children.len(),
            oldest_age_seconds: oldest.map_or(0.0, |c| seconds(c.age_ns)),
            oldest_age_is_lower_bound: oldest.is_some_and(ChildState::age_is_lower_bound),
            oldest_age_source: oldest.map(ChildState::age_source),
            last_wait_age_seconds: parent.last_wait_age_ns.map(seconds),
            last_wait_watched_seconds: parent.waits_watched_ns.map(seconds),
            growth_per_minute: None,
            children: parent
                .children
                .iter()
                .map(ChildReport::from_state)
                .collect(),
        }
    }
}

impl ParentReport {
    /// Fills `namespace`, `pod` and `container` from kubelet's logs, where the cgroup names a
    /// pod.
    pub fn name_container(&mut self, pods: &mut PodDirectory) {
        let Some(cgroup) = &self.cgroup else {
            return;
        };
        let labels = pods.labels(&kubernetes::parse_path(cgroup));
        let named = |s: String| (!s.is_empty()).then_some(s);
        self.namespace = named(labels.namespace);
        self.pod = named(labels.pod);
        self.container = named(labels.container);
    }
}

impl CgroupReport {
    fn from_state(cgroup: &CgroupState) -> Self {
        let c = cgroup.counters;
        Self {
            id: cgroup.id,
            path: cgroup.path.clone(),
            forks: c.forks,
            exits: c.exits,
            zombies_created: c.zombies_created,
            zombies_reaped: c.zombies_reaped,
        }
    }
}

impl Report {
    pub fn collect(engine: &mut StateEngine) -> Result<Self> {
        let parents = engine.parents()?;
        let cgroups = engine.cgroups()?;
        let probes = engine.probes();
        let histogram = probes.lifetimes()?;
        let mut cumulative = 0;
        let buckets = (0..LIFETIME_BUCKETS)
            .map(|i| {
                cumulative += histogram.buckets[i];
                let le_seconds = if i + 1 == LIFETIME_BUCKETS {
                    f64::INFINITY
                } else {
                    (1u64 << i) as f64 / 1e6
                };
                BucketReport {
                    le_seconds,
                    count: cumulative,
                }
            })
            .filter(|b| b.le_seconds.is_finite())
            .collect();
        let losses = engine.losses()?;
        Ok(Self {
            parents: parents.iter().map(ParentReport::from_state).collect(),
            cgroups: cgroups.iter().map(CgroupReport::from_state).collect(),
            zombie_lifetime: LifetimeReport {
                count: histogram.count,
                sum_seconds: seconds(histogram.sum_ns),
                buckets,
            },
            tracer: TracerReport {
                kernel: preflight::kernel_release()?,
                hooks: probes
                    .hook_stats()?
                    .into_iter()
                    .map(|s| HookReport {
                        program: s.hook.program.to_owned(),
                        attach: format!("tp_btf/{}", s.hook.tracepoint),
                        recursion_misses: s.recursion_misses,
                    })
                    .collect(),
                losses: LossReport {
                    zombies_map_full: losses[Loss::ZombiesMapFull as usize],
                    cgroups_map_full: losses[Loss::CgroupsMapFull as usize],
                    waits_map_full: losses[Loss::WaitsMapFull as usize],
                    kernel_read_errors: losses[Loss::KernelRead as usize],
                    events_dropped: losses[Loss::EventsDropped as usize],
                },
                repairs: engine.totals(),
            },
        })
    }

    /// The human-readable form: one row per parent, then a line on the tracer's health.
    pub fn table(&self) -> String {
        let mut out = parents_table(&self.parents);
        let misses: u64 = self.tracer.hooks.iter().map(|h| h.recursion_misses).sum();
        let l = &self.tracer.losses;
        let lost =
            l.zombies_map_full + l.cgroups_map_full + l.waits_map_full + l.kernel_read_errors;
        let _ = writeln!(
            out,
            "tracer: {} hooks, {} recursion misses, {} records lost, {} zombies found only in /proc",
            self.tracer.hooks.len(),
            misses,
            lost,
            self.tracer.repairs.added
        );
        out
    }
}

/// One row per parent: pid, comm, count, oldest age, last wait, `namespace/pod/container`
/// or else the cgroup (as `top`), some child pids.
pub fn parents_table(parents: &[ParentReport]) -> String {
    let mut out = String::new();
    if parents.is_empty() {
        out.push_str("no unreaped children\n");
        return out;
    }
    // `scan --watch` measures how fast each parent's zombies pile up.
    let growth = parents.iter().any(|p| p.growth_per_minute.is_some());
    let growth_cell = |text: &str| {
        if growth {
            format!("  {text:>10}")
        } else {
            String::new()
        }
    };
    let _ = writeln!(
        out,
        "{:>8}  {:<16}  {:>8}{}  {:>9}  {:>13}  {:<32}  CHILDREN",
        "PID",
        "COMM",
        "UNREAPED",
        growth_cell("GROWTH"),
        "OLDEST",
        "LAST WAIT",
        "CONTAINER/CGROUP"
    );
    for p in parents {
        let oldest = format!(
            "{}{}",
            if p.oldest_age_is_lower_bound {
                ">="
            } else {
                ""
            },
            human_duration(p.oldest_age_seconds)
        );
        let last_wait = last_wait(p.last_wait_age_seconds, p.last_wait_watched_seconds);
        let place = match (&p.namespace, &p.pod, &p.container) {
            (Some(ns), Some(pod), container) => {
                format!("{ns}/{pod}/{}", container.as_deref().unwrap_or("?"))
            }
            _ => p.cgroup.clone().unwrap_or_else(|| "-".into()),
        };
        let place = escape::for_terminal(place.as_bytes());
        let per_minute = p
            .growth_per_minute
            .map_or("-".to_owned(), |g| format!("{g:+.1}/min"));
        let _ = writeln!(
            out,
            "{:>8}  {:<16}  {:>8}{}  {:>9}  {:>13}  {:<32}  {}",
            p.pid,
            truncate(&escape::for_terminal(p.comm.as_bytes()), 16),
            p.unreaped,
            growth_cell(&per_minute),
            oldest,
            last_wait,
            truncate_left(&place, 32),
            child_list(&p.children, 8),
        );
    }
    out
}

/// A watch of `wait()` shorter than this says nothing of a parent that waits now and then.
const WAIT_WATCH_MEANINGFUL_SECONDS: f64 = 10.0;

/// The LAST WAIT column: `12s ago`; `none in 5m` after a watch long enough to mean it;
/// `unknown` when not watched, or too briefly.
pub fn last_wait(age_seconds: Option<f64>, watched_seconds: Option<f64>) -> String {
    match (age_seconds, watched_seconds) {
        (Some(age), _) => human_duration(age) + " ago",
        (None, Some(watched)) if watched >= WAIT_WATCH_MEANINGFUL_SECONDS => {
            format!("none in {}", human_duration(watched))
        }
        _ => "unknown".into(),
    }
}

fn child_list(children: &[ChildReport], shown: usize) -> String {
    let mut list: Vec<String> = children
        .iter()
        .take(shown)
        .map(|c| c.pid.to_string())
        .collect();
    if children.len() > shown {
        list.push(format!("(+{} more)", children.len() - shown));
    }
    list.join(" ")
}

/// `3d4h`, `2h5m`, `4m10s`, `12.3s`: the two largest units.
pub fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    let whole = s as u64;
    let (d, h, m, sec) = (
        whole / 86400,
        whole / 3600 % 24,
        whole / 60 % 60,
        whole % 60,
    );
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else {
        format!("{m}m{sec}s")
    }
}

/// Keeps the head: a command name's start says most.
fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let head: String = text.chars().take(width - 1).collect();
    format!("{head}…")
}

/// Keeps the tail: a cgroup path's last component names the container or unit.
fn truncate_left(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        return text.to_owned();
    }
    let tail: String = text.chars().skip(count - (width - 1)).collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(human_duration(0.04), "0.0s");
        assert_eq!(human_duration(12.34), "12.3s");
        assert_eq!(human_duration(250.0), "4m10s");
        assert_eq!(human_duration(7500.0), "2h5m");
        assert_eq!(human_duration(3.0 * 86400.0 + 4.0 * 3600.0 + 5.0), "3d4h");
    }

    #[test]
    fn truncation_keeps_width() {
        assert_eq!(truncate("short", 16), "short");
        assert_eq!(truncate("a-very-long-command-name", 10), "a-very-lo…");
        assert_eq!(
            truncate_left("/kubepods/burstable/pod1/abcdef", 10),
            "…d1/abcdef"
        );
        assert_eq!(truncate_left("/x", 10), "/x");
    }
}
