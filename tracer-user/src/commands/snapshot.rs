//! `reapwatch snapshot`: one look at every parent with unreaped children.

use std::fmt::Write as _;

use anyhow::Result;
use serde::Serialize;
use tracer_common::Loss;

use crate::{
    cli::SnapshotArgs,
    escape,
    kernel::{preflight, KernelPaths},
    kubernetes::{self, PodDirectory},
    state::{AgeSource, CgroupState, ChildState, ParentState, RepairTotals, StateEngine},
    text::{age, fit_end, fit_start, known, last_wait, pad_end, pod_place},
};

pub fn run(args: &SnapshotArgs) -> Result<()> {
    let mut engine = StateEngine::load(
        &preflight::check_all()?,
        args.tracer.maps.sizes(),
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
    pub cgroups: Vec<CgroupCountersReport>,
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

/// The kernel programs' lifecycle counters of one cgroup.
#[derive(Serialize)]
pub struct CgroupCountersReport {
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
    pub paths: KernelPaths,
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
        self.namespace = known(labels.namespace);
        self.pod = known(labels.pod);
        self.container = known(labels.container);
    }
}

impl CgroupCountersReport {
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
        let buckets = histogram
            .cumulative_buckets()
            .map(|(le_seconds, count)| BucketReport { le_seconds, count })
            .collect();
        let losses = engine.losses()?;
        Ok(Self {
            parents: parents.iter().map(ParentReport::from_state).collect(),
            cgroups: cgroups
                .iter()
                .map(CgroupCountersReport::from_state)
                .collect(),
            zombie_lifetime: LifetimeReport {
                count: histogram.count,
                sum_seconds: seconds(histogram.sum_ns),
                buckets,
            },
            tracer: TracerReport {
                kernel: preflight::kernel_release()?,
                paths: probes.paths(),
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
        let oldest = age(p.oldest_age_seconds, p.oldest_age_is_lower_bound);
        let last_wait = last_wait(p.last_wait_age_seconds, p.last_wait_watched_seconds);
        let place = pod_place(
            p.namespace.as_deref(),
            p.pod.as_deref(),
            p.container.as_deref(),
        )
        .or_else(|| p.cgroup.clone())
        .unwrap_or_else(|| "-".into());
        let place = escape::for_terminal(place.as_bytes());
        let per_minute = p
            .growth_per_minute
            .map_or("-".to_owned(), |g| format!("{g:+.1}/min"));
        let _ = writeln!(
            out,
            "{:>8}  {}  {:>8}{}  {:>9}  {:>13}  {}  {}",
            p.pid,
            pad_end(&fit_end(&escape::for_terminal(p.comm.as_bytes()), 16), 16),
            p.unreaped,
            growth_cell(&per_minute),
            oldest,
            last_wait,
            pad_end(&fit_start(&place, 32), 32),
            child_list(&p.children, 8),
        );
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(pid: u32, comm: &str, cgroup: &str) -> ParentReport {
        ParentReport {
            pid,
            comm: comm.to_owned(),
            cgroup: Some(cgroup.to_owned()),
            namespace: None,
            pod: None,
            container: None,
            unreaped: 1,
            oldest_age_seconds: 12.0,
            oldest_age_is_lower_bound: false,
            oldest_age_source: Some(AgeSource::Exit),
            last_wait_age_seconds: None,
            last_wait_watched_seconds: None,
            growth_per_minute: None,
            children: vec![ChildReport {
                pid: 4242,
                comm: "worker".to_owned(),
                exit_code: Some(0),
                signal: None,
                exit_signal: 17,
                age_seconds: 12.0,
                age_is_lower_bound: false,
                age_source: AgeSource::Exit,
            }],
        }
    }

    #[test]
    fn wide_names_keep_the_columns_in_line() {
        use unicode_width::UnicodeWidthStr;

        let table = parents_table(&[
            parent(1, "init", "/system.slice/x.service"),
            parent(
                2,
                "宽字符宽字符宽字符",
                "/kubepods/🐳🐳🐳🐳🐳🐳🐳🐳🐳🐳🐳🐳/app",
            ),
            parent(3, "🐳🐳🐳", "/容器/容器/容器/容器/容器"),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        // The display column where `text` starts in `line`.
        let at = |line: &str, text: &str| line[..line.find(text).unwrap()].width();
        let heading = lines[0];
        for row in &lines[1..] {
            assert_eq!(
                row.width() - "4242".len(),
                at(heading, "CHILDREN"),
                "{table}"
            );
            let oldest_end = at(row, "12.0s") + "12.0s".len();
            assert_eq!(
                oldest_end,
                at(heading, "OLDEST") + "OLDEST".len(),
                "{table}"
            );
        }
        assert!(lines[2].contains(" 宽字符宽字符宽… "), "{table}");
        assert!(
            lines[2].contains(" …ds/🐳🐳🐳🐳🐳🐳🐳🐳🐳🐳🐳🐳/app "),
            "{table}"
        );
    }
}
