//! Turns the state engine's view into a [`Model`]: attribution to containers, label
//! allow-list, series garbage collection, and the exhaustion forecasts.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;
use tracer_common::Loss;

use super::{
    model::{CgroupLabels, CgroupSeries, Model, NodeSeries, ParentSeries, PidsSeries},
    settings::Settings,
};
use crate::{
    escape,
    forecast::GrowthTracker,
    kernel::preflight,
    kubernetes::{self, PodDirectory},
    procfs,
    state::StateEngine,
};

pub struct Sampler {
    engine: StateEngine,
    settings: Settings,
    pods: PodDirectory,
    started: Instant,
    last_reconcile: Option<Instant>,
    /// Last known path of each cgroup id, and since when it is gone.
    known: HashMap<u64, KnownCgroup>,
    node_growth: GrowthTracker,
    cgroup_growth: HashMap<u64, GrowthTracker>,
    wait_entries: u64,
    kernel: String,
}

struct KnownCgroup {
    path: String,
    gone_since: Option<Instant>,
}

impl Sampler {
    pub fn new(engine: StateEngine, settings: Settings) -> Result<Self> {
        Ok(Self {
            engine,
            pods: PodDirectory::new(&settings.pod_logs_dir),
            node_growth: GrowthTracker::new(settings.eta_window.as_secs_f64()),
            settings,
            started: Instant::now(),
            last_reconcile: None,
            known: HashMap::new(),
            cgroup_growth: HashMap::new(),
            wait_entries: 0,
            kernel: preflight::kernel_release()?,
        })
    }

    pub fn sample(&mut self) -> Result<Model> {
        let now = Instant::now();
        if self
            .last_reconcile
            .is_none_or(|at| now.duration_since(at) >= self.settings.reconcile_interval)
        {
            self.engine.reconcile()?;
            self.wait_entries = self.engine.tracer().wait_entries()? as u64;
            self.last_reconcile = Some(now);
        }
        let elapsed = now.duration_since(self.started).as_secs_f64();
        let parents = self.engine.parents()?;

        // Live zombies per parent cgroup: the gauge follows reparented zombies.
        let mut by_cgroup: BTreeMap<u64, CgroupSeries> = BTreeMap::new();
        let mut node_zombies = 0;
        for parent in &parents {
            for child in &parent.children {
                let series = by_cgroup.entry(child.zombie.parent_cgroup_id).or_default();
                series.zombies += 1;
                let age = child.age_ns as f64 / 1e9;
                series.oldest_seconds =
                    Some(series.oldest_seconds.map_or(age, |o: f64| o.max(age)));
                node_zombies += 1;
            }
        }
        for cgroup in self.engine.cgroups()? {
            let series = by_cgroup.entry(cgroup.id).or_default();
            series.zombies_created = cgroup.counters.zombies_created;
            series.zombies_reaped = cgroup.counters.zombies_reaped;
            series.forks = cgroup.counters.forks;
            series.exits = cgroup.counters.exits;
        }

        let mut merged: BTreeMap<CgroupLabels, CgroupSeries> = BTreeMap::new();
        for (id, mut series) in by_cgroup {
            let Some(path) = self.path_of(id, series.zombies, now)? else {
                continue;
            };
            series.pids = self.pids(id, &path, elapsed);
            series.labels = self.labels(&path);
            merge(merged.entry(series.labels.clone()).or_default(), series);
        }

        let limits = procfs::read_node_limits(Path::new("/proc"))?;
        self.node_growth.push(elapsed, limits.tasks as f64);
        let node = NodeSeries {
            zombies: node_zombies,
            tasks: limits.tasks,
            pid_max: limits.pid_max,
            threads_max: limits.threads_max,
            eta_seconds: self.node_growth.eta_seconds(limits.limit() as f64),
        };

        let mut top = Vec::new();
        for parent in parents.iter().take(self.settings.top_parents) {
            let cgroup_id = parent
                .children
                .first()
                .map_or(0, |c| c.zombie.parent_cgroup_id);
            let path = self
                .known
                .get(&cgroup_id)
                .map(|k| k.path.clone())
                .unwrap_or_default();
            top.push(ParentSeries {
                labels: self.labels(&path),
                pid: parent.pid(),
                comm: escape::lossy(&parent.comm),
                zombies: parent.children.len() as u64,
                wait_age_seconds: parent.last_wait_age_ns.map(|ns| ns as f64 / 1e9),
            });
        }

        let tracer = self.engine.tracer();
        let losses = tracer.losses()?;
        let misses: u64 = tracer
            .hook_stats()?
            .iter()
            .map(|h| h.recursion_misses)
            .sum();
        let counters = tracer.cgroup_counters()?.len() as u64;
        Ok(Model {
            cgroups: merged.into_values().collect(),
            parents: top,
            node,
            lifetimes: tracer.lifetimes()?,
            version: env!("CARGO_PKG_VERSION"),
            kernel: self.kernel.clone(),
            events_lost: losses.iter().sum::<u64>() + misses,
            maps: vec![
                (
                    "zombies",
                    node_zombies,
                    losses[Loss::ZombiesMapFull as usize],
                ),
                (
                    "cgroup_counters",
                    counters,
                    losses[Loss::CgroupsMapFull as usize],
                ),
                (
                    "waits",
                    self.wait_entries,
                    losses[Loss::WaitsMapFull as usize],
                ),
            ],
        })
    }

    /// The path to label a cgroup with; None once a removed cgroup with nothing unreaped has
    /// outlived the grace period (its counters are then dropped).
    fn path_of(&mut self, id: u64, zombies: u64, now: Instant) -> Result<Option<String>> {
        if let Some(path) = self.engine.cgroup_path(id) {
            self.known.insert(
                id,
                KnownCgroup {
                    path: path.clone(),
                    gone_since: None,
                },
            );
            return Ok(Some(path));
        }
        let grace = self.settings.gc_grace;
        let known = self.known.entry(id).or_insert_with(|| KnownCgroup {
            // Created and removed between two samples: never seen by path.
            path: String::new(),
            gone_since: None,
        });
        let gone_since = *known.gone_since.get_or_insert(now);
        if zombies == 0 && now.duration_since(gone_since) >= grace {
            self.known.remove(&id);
            self.cgroup_growth.remove(&id);
            self.engine.forget_cgroup(id)?;
            return Ok(None);
        }
        Ok(Some(self.known[&id].path.clone()))
    }

    fn pids(&mut self, id: u64, path: &str, elapsed: f64) -> Option<PidsSeries> {
        let (current, max) = self.engine.hierarchy()?.pids(path)?;
        let max = max?;
        let window = self.settings.eta_window.as_secs_f64();
        let growth = self
            .cgroup_growth
            .entry(id)
            .or_insert_with(|| GrowthTracker::new(window));
        growth.push(elapsed, current as f64);
        Some(PidsSeries {
            current,
            max,
            eta_seconds: growth.eta_seconds(max as f64),
        })
    }

    fn labels(&mut self, path: &str) -> CgroupLabels {
        let pod = self.pods.labels(&kubernetes::parse_path(path));
        let mut labels = [path.to_owned(), pod.namespace, pod.pod, pod.container];
        for (value, keep) in labels.iter_mut().zip(self.settings.keep_labels) {
            if !keep {
                value.clear();
            }
        }
        labels
    }

    pub fn sample_interval(&self) -> Duration {
        self.settings.sample_interval
    }
}

/// Series whose kept labels coincide are summed (their oldest zombie is the oldest of all).
fn merge(into: &mut CgroupSeries, series: CgroupSeries) {
    into.labels = series.labels;
    into.zombies += series.zombies;
    into.oldest_seconds = match (into.oldest_seconds, series.oldest_seconds) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    into.zombies_created += series.zombies_created;
    into.zombies_reaped += series.zombies_reaped;
    into.forks += series.forks;
    into.exits += series.exits;
    into.pids = match (into.pids, series.pids) {
        (Some(a), Some(b)) => Some(PidsSeries {
            current: a.current + b.current,
            max: a.max + b.max,
            eta_seconds: match (a.eta_seconds, b.eta_seconds) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            },
        }),
        (a, b) => a.or(b),
    };
}
