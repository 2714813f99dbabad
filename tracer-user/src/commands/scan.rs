//! `reapwatch scan`: zombies and PID headroom from `/proc` and cgroupfs alone. No eBPF and no
//! privileges needed where `/proc` is readable; exit times are unknown, so ages count from
//! when this scan first saw each zombie.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    path::Path,
    time::Instant,
};

use anyhow::Result;
use serde::Serialize;
use tracer_common::{ProcessKey, ZOMBIE_EXIT_FROM_SCHEDULER};

use super::snapshot::{parents_table, ParentReport};
use crate::{
    cgroup::{self, binding_limit, CgroupHierarchy},
    cli::ScanArgs,
    clock::monotonic_ns,
    escape,
    forecast::GrowthTracker,
    kubelet::{self, KubeletReport, PodRanking},
    kubernetes::{self, PodDirectory},
    procfs::{self, NodeLimits, ProcStat},
    state::{self, exit_times, found_in_proc, ChildState, ParentState},
    text::{self, human_duration, known, pod_place},
};

/// The `scan --json` document: `parents` as in `snapshot --json`, plus `node`, `cgroups`,
/// the kubelet's PID eviction and what it makes of each pod with zombies.
#[derive(Serialize)]
pub struct ScanReport {
    pub parents: Vec<ParentReport>,
    pub node: NodeReport,
    pub cgroups: Vec<CgroupHeadroomReport>,
    pub kubelet: KubeletReport,
    pub pods: Vec<PodReport>,
}

/// A pod with unreaped zombies, as the kubelet's PID eviction ranks it.
#[derive(Serialize)]
pub struct PodReport {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    #[serde(flatten)]
    pub ranking: PodRanking,
    /// The same in words, as the text report says it.
    #[serde(skip)]
    pub words: String,
}

#[derive(Serialize)]
pub struct NodeReport {
    pub tasks: u64,
    pub pid_max: u64,
    pub threads_max: u64,
    pub zombies: u64,
    /// Seconds until tasks reach min(pid_max, threads_max); null without a significant rise
    /// (and always without --watch).
    pub eta_seconds: Option<f64>,
    /// `--watch` only: net change of the task count per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks_growth_per_minute: Option<f64>,
}

/// A cgroup's unreaped zombies and how close it is to its `pids.max`.
#[derive(Serialize)]
pub struct CgroupHeadroomReport {
    pub cgroup: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    /// Unreaped zombies whose parent is in this cgroup.
    pub zombies: u64,
    pub pids_current: Option<u64>,
    pub pids_max: Option<u64>,
    pub pids_eta_seconds: Option<f64>,
    /// At its `pids.max`: `fork()` fails inside it now.
    pub pids_full: bool,
    /// Forks refused at the limit so far (`pids.events`), where it has a `pids.max`.
    pub pids_fork_failures: Option<u64>,
    /// The limit that stops its forks first, its own or an ancestor's (its pod's); null
    /// where none is set on the way up.
    pub pids_limit: Option<PidsLimitReport>,
}

/// A cgroup's binding `pids.max` (see `cgroup::binding_limit`).
#[derive(Serialize)]
pub struct PidsLimitReport {
    /// The cgroup that sets it.
    pub cgroup: String,
    /// That cgroup's `pids.current` and `pids.max`.
    pub current: u64,
    pub max: u64,
    /// When that cgroup's `pids.current` reaches it, at its growth over the watch.
    pub eta_seconds: Option<f64>,
    pub full: bool,
}

/// One look at `/proc` and at the cgroups' pids controllers.
struct ScanSample {
    at: Instant,
    processes: Vec<ProcStat>,
    limits: NodeLimits,
    pids: BTreeMap<String, (u64, Option<u64>)>,
    /// Forks refused, for the cgroups with a numeric `pids.max`.
    refused: BTreeMap<String, u64>,
}

/// What a scan keeps over its `--watch`: the first sample's few numbers, the latest sample, and running
/// statistics. Never the samples in between: a long watch must not grow with its length.
struct ScanHistory {
    first_at: Instant,
    first_tasks: u64,
    /// Unreaped children per parent in the first sample.
    initial: BTreeMap<u32, usize>,
    last: ScanSample,
    /// When each zombie still unreaped was first seen: the lower bound of its age.
    first_seen: HashMap<ProcessKey, Instant>,
    node_growth: GrowthTracker,
    /// Per cgroup with a numeric `pids.max`, while it has one.
    pids_growth: BTreeMap<String, GrowthTracker>,
    window_seconds: f64,
}

impl ScanHistory {
    fn new(first: ScanSample, window_seconds: f64) -> Self {
        let mut history = Self {
            first_at: first.at,
            first_tasks: first.limits.tasks,
            initial: zombies_by_parent(&first)
                .into_iter()
                .map(|(ppid, children)| (ppid, children.len()))
                .collect(),
            last: first,
            first_seen: HashMap::new(),
            node_growth: GrowthTracker::new(window_seconds),
            pids_growth: BTreeMap::new(),
            window_seconds,
        };
        history.account();
        history
    }

    fn observe(&mut self, sample: ScanSample) {
        self.last = sample;
        self.account();
    }

    /// Folds the latest sample into the statistics, and drops what it no longer has.
    fn account(&mut self) {
        let sample = &self.last;
        let t = sample.at.duration_since(self.first_at).as_secs_f64();
        let zombies: Vec<ProcessKey> = sample
            .processes
            .iter()
            .filter(|p| p.is_unreaped_zombie())
            .map(|p| ProcessKey::new(p.pid, p.start_ticks))
            .collect();
        let mut first_seen = HashMap::with_capacity(zombies.len());
        for key in zombies {
            let seen = self.first_seen.get(&key).copied().unwrap_or(sample.at);
            first_seen.insert(key, seen);
        }
        self.first_seen = first_seen;
        self.node_growth.push(t, sample.limits.tasks as f64);
        self.pids_growth
            .retain(|path, _| sample.pids.get(path).is_some_and(|(_, max)| max.is_some()));
        for (path, &(current, max)) in &sample.pids {
            if max.is_some() {
                self.pids_growth
                    .entry(path.clone())
                    .or_insert_with(|| GrowthTracker::new(self.window_seconds))
                    .push(t, current as f64);
            }
        }
    }
}

pub fn run(args: &ScanArgs) -> Result<()> {
    let proc_root = Path::new("/proc");
    let mut hierarchy =
        CgroupHierarchy::choose(Path::new("/sys/fs/cgroup"), args.hierarchy.cgroup_hierarchy)?;
    let take = || -> Result<ScanSample> {
        let (mut pids, mut refused) = (BTreeMap::new(), BTreeMap::new());
        if let Some(h) = hierarchy.as_ref() {
            for (_, path) in h.walk() {
                let Some(usage) = h.pids(&path) else {
                    continue;
                };
                let text = escape::lossy(&path);
                // Where the kernel counts them: a limit's own cgroup, or (v1, before 6.14)
                // the cgroup that forked.
                if let Some(failures) = h
                    .fork_failures(&path)
                    .filter(|&n| usage.1.is_some() || n > 0)
                {
                    refused.insert(text.clone(), failures);
                }
                pids.insert(text, usage);
            }
        }
        Ok(ScanSample {
            at: Instant::now(),
            processes: procfs::scan(proc_root)?.processes,
            limits: procfs::read_node_limits(proc_root)?,
            pids,
            refused,
        })
    };

    // The watch and one interval more: the first sample stays in the trend's window.
    let window = args
        .watch
        .map_or(0.0, |watch| (watch + args.interval).as_secs_f64())
        .max(1.0);
    if let Some(duration) = args.watch {
        // Nothing else shows until the watch ends.
        eprintln!(
            "reapwatch: scanning every {} for {}",
            human_duration(args.interval.as_secs_f64()),
            human_duration(duration.as_secs_f64())
        );
    }
    let mut history = ScanHistory::new(take()?, window);
    if let Some(duration) = args.watch {
        let start = history.first_at;
        while start.elapsed() < duration {
            std::thread::sleep(args.interval.min(duration.saturating_sub(start.elapsed())));
            history.observe(take()?);
        }
    }
    let report = build(&history, args, hierarchy.as_mut(), proc_root)?;
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        table(&report)
    };
    super::emit(&text)
}

fn build(
    history: &ScanHistory,
    args: &ScanArgs,
    mut hierarchy: Option<&mut CgroupHierarchy>,
    proc_root: &Path,
) -> Result<ScanReport> {
    let last = &history.last;
    let minutes = last.at.duration_since(history.first_at).as_secs_f64() / 60.0;
    let watched = minutes > 0.0 && args.watch.is_some();

    let now = zombies_by_parent(last);
    let by_pid: HashMap<u32, &ProcStat> = last.processes.iter().map(|p| (p.pid, p)).collect();

    let now_ns = monotonic_ns();
    let exited = exit_times(proc_root, now.values().flatten().copied());
    let mut parents = Vec::new();
    let mut zombies_by_cgroup: BTreeMap<String, u64> = BTreeMap::new();
    for (&ppid, children) in &now {
        // Unreadable or gone: shown without a cgroup rather than failing the scan.
        let cgroups = procfs::read_cgroups(proc_root, ppid)
            .ok()
            .flatten()
            .unwrap_or_default();
        if let Some(h) = hierarchy.as_deref_mut() {
            if let Some(line) = h.line(&cgroups) {
                let path = escape::lossy(&h.host_path(&line.path));
                *zombies_by_cgroup.entry(path).or_default() += children.len() as u64;
            }
        }
        let mut state = ParentState {
            key: ProcessKey::new(ppid, by_pid.get(&ppid).map_or(0, |p| p.start_ticks)),
            comm: by_pid
                .get(&ppid)
                .map(|p| p.comm.clone())
                .unwrap_or_default(),
            cgroup: cgroup::select_host_path(hierarchy.as_deref_mut(), &cgroups),
            last_wait_age_ns: None,
            waits_watched_ns: None,
            children: children
                .iter()
                .map(|c| {
                    let key = ProcessKey::new(c.pid, c.start_ticks);
                    let seen = history.first_seen.get(&key).copied().unwrap_or(last.at);
                    let parent = ProcessKey::new(ppid, 0);
                    let zombie = found_in_proc(c, parent, now_ns, exited.get(&c.pid).copied());
                    let age_ns = if zombie.flags & ZOMBIE_EXIT_FROM_SCHEDULER != 0 {
                        now_ns.saturating_sub(zombie.exit_ns)
                    } else {
                        last.at.duration_since(seen).as_nanos() as u64
                    };
                    ChildState {
                        key,
                        zombie,
                        age_ns,
                        parent_cgroup_id: 0,
                    }
                })
                .collect(),
        };
        state.order_children();
        parents.push(state);
    }
    state::rank_parents(&mut parents);
    let mut parents: Vec<ParentReport> = parents
        .iter()
        .map(|state| {
            let mut report = ParentReport::from_state(state);
            if watched {
                let before = history.initial.get(&state.pid()).copied().unwrap_or(0) as f64;
                let unreaped = state.children.len() as f64;
                report.growth_per_minute = Some((unreaped - before) / minutes);
            }
            report
        })
        .collect();

    let node = NodeReport {
        tasks: last.limits.tasks,
        pid_max: last.limits.pid_max,
        threads_max: last.limits.threads_max,
        zombies: now.values().map(|c| c.len() as u64).sum(),
        eta_seconds: history.node_growth.eta_seconds(last.limits.limit() as f64),
        tasks_growth_per_minute: watched
            .then(|| (last.limits.tasks as f64 - history.first_tasks as f64) / minutes),
    };

    // Cgroups with zombies or with a pids.max: the ones with something to say.
    let mut pods = PodDirectory::new(&args.pods.pod_logs_dir);
    for parent in &mut parents {
        parent.name_container(&mut pods);
    }
    let mut paths: Vec<&String> = zombies_by_cgroup.keys().collect();
    paths.extend(
        last.pids
            .iter()
            .filter(|(_, (_, max))| max.is_some())
            .map(|(p, _)| p),
    );
    paths.sort();
    paths.dedup();
    let cgroups = paths
        .into_iter()
        .map(|path| {
            let labels = pods.labels(&kubernetes::parse_path(path));
            let (current, max) = last.pids.get(path).copied().unzip();
            let max = max.flatten();
            CgroupHeadroomReport {
                cgroup: path.clone(),
                namespace: known(labels.namespace),
                pod: known(labels.pod),
                container: known(labels.container),
                zombies: zombies_by_cgroup.get(path).copied().unwrap_or(0),
                pids_current: current,
                pids_max: max,
                pids_eta_seconds: max.and_then(|max| {
                    history
                        .pids_growth
                        .get(path)
                        .and_then(|growth| growth.eta_seconds(max as f64))
                }),
                pids_full: current
                    .zip(max)
                    .is_some_and(|(current, max)| current >= max),
                pids_fork_failures: last.refused.get(path).copied(),
                pids_limit: binding_limit(path, |p| last.pids.get(p).copied()).map(|limit| {
                    PidsLimitReport {
                        eta_seconds: history
                            .pids_growth
                            .get(&limit.cgroup)
                            .and_then(|growth| growth.eta_seconds(limit.max as f64)),
                        full: limit.headroom() == 0,
                        cgroup: limit.cgroup,
                        current: limit.current,
                        max: limit.max,
                    }
                }),
            }
        })
        .collect();
    // The kubelet's ranking of each pod with zombies.
    let kubelet = kubelet::discover(proc_root, Path::new("/")).view;
    let mut zombies_by_pod: BTreeMap<&str, u64> = BTreeMap::new();
    for (path, zombies) in &zombies_by_cgroup {
        if let Some(pod) = kubernetes::pod_cgroup(path) {
            *zombies_by_pod.entry(pod).or_default() += zombies;
        }
    }
    let mut pod_reports = Vec::new();
    if let Some(h) = hierarchy.as_deref() {
        for (pod, zombies) in zombies_by_pod {
            let Some(ranking) = PodRanking::of(h, pod, zombies) else {
                continue;
            };
            let labels = pods.labels(&kubernetes::parse_path(pod));
            pod_reports.push(PodReport {
                namespace: known(labels.namespace),
                pod: known(labels.pod),
                words: text::kubelet_ranking(&ranking, &kubelet),
                ranking,
            });
        }
    }
    pod_reports.sort_by_key(|p| std::cmp::Reverse(p.ranking.zombies));
    Ok(ScanReport {
        parents,
        node,
        cgroups,
        kubelet: kubelet.report(&last.limits),
        pods: pod_reports,
    })
}

fn zombies_by_parent(sample: &ScanSample) -> BTreeMap<u32, Vec<&ProcStat>> {
    let mut by_parent: BTreeMap<u32, Vec<&ProcStat>> = BTreeMap::new();
    for p in sample.processes.iter().filter(|p| p.is_unreaped_zombie()) {
        by_parent.entry(p.ppid).or_default().push(p);
    }
    by_parent
}

fn table(report: &ScanReport) -> String {
    let node = &report.node;
    let mut out = format!(
        "node: {} tasks of {} (pid_max {}, threads-max {}), {} zombies, exhaustion ETA {}",
        node.tasks,
        node.pid_max.min(node.threads_max),
        node.pid_max,
        node.threads_max,
        node.zombies,
        eta_text(node.eta_seconds, node.tasks_growth_per_minute.is_some()),
    );
    if let Some(growth) = node.tasks_growth_per_minute {
        let _ = write!(out, ", tasks {growth:+.1}/min");
    }
    out.push_str("\n\n");
    out.push_str(&parents_table(&report.parents));
    let rows: Vec<&CgroupHeadroomReport> = report
        .cgroups
        .iter()
        .filter(|c| c.zombies > 0 || c.pids_max.is_some())
        .collect();
    if !rows.is_empty() {
        let watched = node.tasks_growth_per_minute.is_some();
        let _ = writeln!(
            out,
            "\n{:>8}  {:>12}  {:>12}  {:>8}  {:>12}  {:>12}  CGROUP (LIMITED BY)",
            "ZOMBIES", "PIDS", "PIDS ETA", "REFUSED", "LIMIT", "LIMIT ETA"
        );
        for c in rows {
            let pids = match (c.pids_current, c.pids_max) {
                (Some(cur), Some(max)) => format!("{cur}/{max}"),
                (Some(cur), None) => cur.to_string(),
                _ => "-".into(),
            };
            let names = pod_place(
                c.namespace.as_deref(),
                c.pod.as_deref(),
                c.container.as_deref(),
            );
            let place = match names {
                Some(names) => format!("{names} {}", c.cgroup),
                None => c.cgroup.clone(),
            };
            let eta = if c.pids_full {
                "FULL".to_owned()
            } else if c.pids_max.is_some() {
                eta_text(c.pids_eta_seconds, watched)
            } else {
                "-".to_owned()
            };
            let (limit, limit_eta) = match &c.pids_limit {
                Some(l) if l.full => (format!("{}/{}", l.current, l.max), "FULL".to_owned()),
                Some(l) => (
                    format!("{}/{}", l.current, l.max),
                    eta_text(l.eta_seconds, watched),
                ),
                None => ("none".to_owned(), "-".to_owned()),
            };
            // The cgroup that sets the binding limit, where it is not this one.
            let by = match &c.pids_limit {
                Some(l) if l.cgroup != c.cgroup => format!(" (limited by {})", l.cgroup),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "{:>8}  {:>12}  {:>12}  {:>8}  {:>12}  {:>12}  {}{}",
                c.zombies,
                pids,
                eta,
                c.pids_fork_failures
                    .map_or("-".to_owned(), |n| n.to_string()),
                limit,
                limit_eta,
                escape::for_terminal(place.as_bytes()),
                escape::for_terminal(by.as_bytes())
            );
        }
    }
    if !report.pods.is_empty() {
        let _ = writeln!(out, "\n{}", text::kubelet_line(&report.kubelet));
        for pod in &report.pods {
            let place = pod_place(pod.namespace.as_deref(), pod.pod.as_deref(), Some(""))
                .map_or(pod.ranking.pod_cgroup.clone(), |p| {
                    p.trim_end_matches('/').to_owned()
                });
            let _ = writeln!(
                out,
                "{}: {}",
                escape::for_terminal(place.as_bytes()),
                pod.words
            );
        }
    }
    out
}

/// An exhaustion forecast in the words `top` uses: `in 3h10m`, `not growing`, or, without a
/// watch to measure growth over, `unknown (use --watch)`.
fn eta_text(eta_seconds: Option<f64>, watched: bool) -> String {
    match (eta_seconds, watched) {
        (Some(eta), _) => format!("in {}", human_duration(eta)),
        (None, true) => "not growing".to_owned(),
        (None, false) => "unknown (use --watch)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A node where each sample shows one new zombie (the last one reaped) and one new
    /// cgroup with a pids.max (the last one removed).
    fn churning(start: Instant, i: u64) -> ScanSample {
        let zombie = ProcStat {
            pid: 1000 + i as u32,
            comm: b"worker".to_vec(),
            state: b'Z',
            ppid: 1,
            num_threads: 1,
            start_ticks: i,
            exit_signal: Some(17),
            exit_status: Some(0),
            processor: None,
        };
        ScanSample {
            at: start + Duration::from_millis(10 * i),
            processes: vec![zombie],
            refused: BTreeMap::new(),
            limits: NodeLimits {
                tasks: 100,
                pid_max: 32768,
                threads_max: 32768,
            },
            pids: BTreeMap::from([(format!("/c{i}"), (1, Some(10)))]),
        }
    }

    #[test]
    fn a_long_watch_keeps_only_what_the_latest_sample_has() {
        let start = Instant::now();
        let mut history = ScanHistory::new(churning(start, 0), 3600.0);
        for i in 1..10_000 {
            history.observe(churning(start, i));
        }
        let latest = ProcessKey::new(1000 + 9999, 9999);
        assert_eq!(history.first_seen.keys().collect::<Vec<_>>(), [&latest]);
        assert_eq!(
            history.pids_growth.keys().collect::<Vec<_>>(),
            ["/c9999"],
            "trends of removed cgroups kept"
        );
        assert_eq!(history.initial, BTreeMap::from([(1, 1)]));
    }
}
