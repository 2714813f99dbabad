//! Turns each tick of the watch into a [`Model`]: attribution to containers, label
//! allow-list, series garbage collection, counters, and the per-cgroup pids forecasts.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;
use tracer_common::{CgroupCounters, Loss};

use super::{
    ledger::CounterLedger,
    model::{
        CgroupLabels, CgroupSeries, Health, KubeletSeries, MapUsage, Model, NodeSeries,
        ParentSeries, PidsSeries, SeriesCounters,
    },
    scrapes::ScrapeLog,
    settings::Settings,
};
use crate::{
    cgroup::BindingLimit,
    cli::CgroupSeriesChoice,
    escape,
    forecast::GrowthTracker,
    kernel::preflight,
    kubelet::{KubeletView, KubeletWatch},
    kubernetes::{self, PodDirectory},
    state::StateEngine,
    watch::Watch,
};

pub struct Sampler {
    watch: Watch,
    settings: Settings,
    pods: PodDirectory,
    /// Last known path of each cgroup id, and since when it is gone.
    known: HashMap<u64, KnownCgroup>,
    counters: CounterLedger,
    /// When each cgroup last had something to say (`--cgroup-series active`).
    last_said: HashMap<u64, Instant>,
    /// The `pids.current` trend of each cgroup that sets a binding limit, by its path.
    limit_growth: HashMap<String, GrowthTracker>,
    wait_entries: u64,
    kernel: String,
    kubelet: KubeletWatch,
}

/// A new cgroup's attribution can lag: its path comes from a walk of the hierarchy (at most
/// every second), its pod names from a rescan of kubelet's logs (at most every 10 s). Its
/// counters wait for both this long, so that its first counts are not left behind under
/// labels it is about to lose; its gauges are exported at once.
const ATTRIBUTION_SETTLES: Duration = Duration::from_secs(12);

/// A full `/proc` scan this long is logged at info level.
const SLOW_RECONCILE: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct KnownCgroup {
    /// Last known path; empty if never found.
    path: String,
    resolved: bool,
    first_seen: Instant,
    gone_since: Option<Instant>,
}

/// One cgroup id in a sample.
#[derive(Default)]
struct IdSample {
    series: CgroupSeries,
    raw: CgroupCounters,
    /// Live zombies it created (their reaps will be charged to it).
    created_alive: u64,
}

impl Sampler {
    pub fn new(engine: StateEngine, settings: Settings) -> Result<Self> {
        Ok(Self {
            watch: Watch::new(engine, settings.reconcile_interval, settings.eta_window),
            pods: PodDirectory::new(&settings.pod_logs_dir),
            counters: CounterLedger::new(settings.map_sizes.cgroups as usize),
            last_said: HashMap::new(),
            settings,
            known: HashMap::new(),
            limit_growth: HashMap::new(),
            wait_entries: 0,
            kernel: preflight::kernel_release()?,
            kubelet: KubeletWatch::default(),
        })
    }

    /// One sample; `scrapes` says which earlier ones every scraper has fetched.
    pub fn sample(&mut self, scrapes: &ScrapeLog) -> Result<Model> {
        // The sampler thread owns the programs: it forwards their log too, once a sample.
        self.watch.engine_mut().probes_mut().forward_kernel_log();
        let now = Instant::now();
        let tick = self.watch.tick()?;
        if tick.reconciled {
            // How long a full scan takes bounds --liveness-timeout from below: said at info
            // level once it takes long enough to matter.
            let took = now.elapsed();
            let level = if took >= SLOW_RECONCILE {
                log::Level::Info
            } else {
                log::Level::Debug
            };
            log::log!(level, "reconciled with /proc in {:.3}s", took.as_secs_f64());
            self.wait_entries = self.watch.engine().probes().wait_entries()? as u64;
            // Its files are mounted at their host paths.
            self.kubelet.refresh(Path::new("/proc"), Path::new("/"));
        }
        let elapsed = tick.elapsed.as_secs_f64();
        let parents = tick.parents;

        // Live zombies per parent cgroup: the gauge follows reparented zombies.
        let mut by_id: BTreeMap<u64, IdSample> = BTreeMap::new();
        let mut node_zombies = 0;
        for child in parents.iter().flat_map(|p| &p.children) {
            let series = &mut by_id.entry(child.parent_cgroup_id).or_default().series;
            series.zombies += 1;
            let age = child.age_ns as f64 / 1e9;
            series.oldest_seconds = Some(series.oldest_seconds.map_or(age, |o: f64| o.max(age)));
            by_id
                .entry(child.zombie.parent_cgroup_id)
                .or_default()
                .created_alive += 1;
            node_zombies += 1;
        }
        for cgroup in self.watch.engine_mut().cgroups()? {
            by_id.entry(cgroup.id).or_default().raw = cgroup.counters;
        }
        // The cgroups whose pids.max binds these get series of their own, even without a
        // process (a pod's): the kernel may count the forks their limit refuses there.
        let limits = self.binding_limits(by_id.keys().copied().collect());
        let hierarchy = self.watch.engine().hierarchy();
        for limit in limits.values() {
            if let Some(id) = hierarchy.and_then(|h| h.id_of(limit.cgroup.as_bytes())) {
                by_id.entry(id).or_default();
            }
        }

        let sequence = self.counters.begin();
        let mut merged: BTreeMap<CgroupLabels, CgroupSeries> = BTreeMap::new();
        let mut seen = HashSet::new();
        let mut limit_cgroups = HashSet::new();
        for (id, sample) in by_id {
            let pinned = sample.series.zombies + sample.created_alive;
            let (known, collected) = self.attribution(id, pinned, now)?;
            let fork_failures = self
                .watch
                .engine()
                .hierarchy()
                .and_then(|h| h.fork_failures(&known.path));
            let news = self.counters.observe(id, sample.raw, fork_failures);
            let (labels, complete) = self.labels(&known.path);
            if collected {
                // Its last counts go to its series, which a scraper must see before it goes.
                if self.was_active(id, now) {
                    self.counters.feed_last(id, &labels);
                } else {
                    self.counters.feed(id, &labels);
                }
                self.counters.forget(id);
                continue;
            }
            seen.insert(id);
            let mut series = sample.series;
            let limit = match limits.get(&id) {
                Some(limit) => Some(limit.clone()),
                // A limiting cgroup added above, or one found since.
                None => self
                    .watch
                    .engine()
                    .hierarchy()
                    .and_then(|h| h.binding_limit(&known.path)),
            };
            series.pids = limit.map(|limit| self.pids(limit, elapsed));
            if let Some(pids) = &series.pids {
                limit_cgroups.insert(pids.cgroup.clone());
            }
            series.labels = labels;
            // Counts fed under labels about to be completed would stay behind with them.
            let settled = known.resolved && complete
                || now.duration_since(known.first_seen) >= ATTRIBUTION_SETTLES;
            if settled {
                self.counters.feed(id, &series.labels);
                // Placeholder: the ledger says what the series shows, once all its ids fed.
                series.counters = Some(SeriesCounters::default());
            }
            // Counted all the same: a series that turns active shows its whole totals.
            if !self.is_active(id, &series, &news, now) {
                continue;
            }
            merge(merged.entry(series.labels.clone()).or_default(), series);
        }
        let scraped = |sample: u64| scrapes.fetched_by_all(sample, now);
        for series in merged.values_mut() {
            if series.counters.is_some() {
                series.counters = Some(self.counters.show(&series.labels, &scraped));
            }
        }
        for (labels, counters) in self.counters.farewells(&scraped) {
            merged.entry(labels.clone()).or_insert(CgroupSeries {
                labels,
                counters: Some(counters),
                ..CgroupSeries::default()
            });
        }
        self.counters.end();
        // Ids that left the sample without being collected leave nothing behind either.
        self.known.retain(|id, _| seen.contains(id));
        self.limit_growth
            .retain(|cgroup, _| limit_cgroups.contains(cgroup));
        self.last_said.retain(|id, _| seen.contains(id));

        let node = NodeSeries {
            zombies: node_zombies,
            tasks: tick.node.tasks,
            pid_max: tick.node.pid_max,
            threads_max: tick.node.threads_max,
            eta_seconds: tick.node_eta_seconds,
            kubelet: self.kubelet_series(tick.node.limit()),
        };

        let mut top = Vec::new();
        for parent in parents.iter().take(self.settings.top_parents) {
            let cgroup_id = parent.children.first().map_or(0, |c| c.parent_cgroup_id);
            let path = self
                .known
                .get(&cgroup_id)
                .map(|k| k.path.clone())
                .unwrap_or_default();
            top.push(ParentSeries {
                labels: self.labels(&path).0,
                pid: parent.pid(),
                comm: escape::lossy(&parent.comm),
                zombies: parent.children.len() as u64,
                wait_age_seconds: parent.last_wait_age_ns.map(|ns| ns as f64 / 1e9),
            });
        }

        let engine = self.watch.engine();
        let losses = engine.losses()?;
        let probes = engine.probes();
        let counters = probes.cgroup_counters()?.len() as u64;
        let in_maps = node_zombies.saturating_sub(engine.overflowed_zombies() as u64);
        let mut cgroups: Vec<CgroupSeries> = merged.into_values().collect();
        if let Some(limit) = self.settings.top_cgroups {
            keep_most_pressed(&mut cgroups, limit);
        }
        Ok(Model {
            cgroups,
            parents: top,
            node,
            lifetimes: probes.lifetimes()?,
            version: env!("CARGO_PKG_VERSION"),
            kernel: self.kernel.clone(),
            events_lost: losses.iter().sum::<u64>() + probes.recursion_misses()?,
            maps: vec![
                MapUsage {
                    map: "zombies",
                    entries: in_maps,
                    times_full: losses[Loss::ZombiesMapFull as usize],
                },
                MapUsage {
                    map: "cgroup_counters",
                    entries: counters,
                    times_full: losses[Loss::CgroupsMapFull as usize],
                },
                MapUsage {
                    map: "waits",
                    entries: self.wait_entries,
                    times_full: losses[Loss::WaitsMapFull as usize],
                },
            ],
            proc_skipped: engine.totals().skipped,
            health: Health::default(),
            sequence,
        })
    }

    /// Whether cgroup `id` gets per-cgroup series: always, or with `--cgroup-series active`
    /// while it has had something to say within the forecast window: unreaped zombies at a
    /// sample (not the ones reaped at once: every exit is a zombie for a moment), or a
    /// pids.max filling up or refusing forks.
    fn is_active(
        &mut self,
        id: u64,
        series: &CgroupSeries,
        news: &SeriesCounters,
        now: Instant,
    ) -> bool {
        if self.settings.cgroup_series == CgroupSeriesChoice::All {
            return true;
        }
        let pids_pressing = series
            .pids
            .as_ref()
            .is_some_and(|p| p.eta_seconds.is_some() || p.current >= p.max);
        if series.zombies > 0 || news.pids_fork_failures > 0 || pids_pressing {
            self.last_said.insert(id, now);
        }
        self.was_active(id, now)
    }

    /// What is known of a cgroup id, and whether it is collected now: a removed cgroup with
    /// nothing unreaped (`pinned`: zombies of its processes, or that it created) that has
    /// outlived the grace period. Its kernel counters are then dropped; its series keeps its
    /// totals.
    fn attribution(&mut self, id: u64, pinned: u64, now: Instant) -> Result<(KnownCgroup, bool)> {
        let path = self.watch.engine_mut().cgroup_path(id);
        let known = self.known.entry(id).or_insert_with(|| KnownCgroup {
            // Not found yet (the hierarchy is walked at most every second), or created and
            // removed between two samples.
            path: String::new(),
            resolved: false,
            first_seen: now,
            gone_since: None,
        });
        match path {
            Some(path) => {
                known.path = path;
                known.resolved = true;
                known.gone_since = None;
            }
            None => {
                let gone_since = *known.gone_since.get_or_insert(now);
                // A cgroup not found yet may be new: it is gone once a walk found it and then
                // did not, or when it stays unfound as long as attribution waits.
                let gone =
                    known.resolved || now.duration_since(known.first_seen) >= ATTRIBUTION_SETTLES;
                if gone && pinned == 0 && now.duration_since(gone_since) >= self.settings.gc_grace {
                    let known = self.known.remove(&id).expect("entered above");
                    self.watch.engine_mut().forget_cgroup(id)?;
                    return Ok((known, true));
                }
            }
        }
        Ok((known.clone(), false))
    }

    /// Whether cgroup `id` had series in the last samples (always, without
    /// `--cgroup-series active`).
    fn was_active(&self, id: u64, now: Instant) -> bool {
        self.settings.cgroup_series == CgroupSeriesChoice::All
            || self
                .last_said
                .get(&id)
                .is_some_and(|&at| now.duration_since(at) <= self.settings.eta_window)
    }

    /// The binding limit of each of `ids` that is a cgroup now.
    fn binding_limits(&mut self, ids: Vec<u64>) -> HashMap<u64, BindingLimit> {
        let mut limits = HashMap::new();
        for id in ids {
            let Some(path) = self.watch.engine_mut().cgroup_path(id) else {
                continue;
            };
            let Some(hierarchy) = self.watch.engine().hierarchy() else {
                break;
            };
            if let Some(limit) = hierarchy.binding_limit(&path) {
                limits.insert(id, limit);
            }
        }
        limits
    }

    /// A binding limit, with its ETA from the trend of the cgroup that sets it (fed once a
    /// sample however many cgroups it binds: a repeated time replaces).
    fn pids(&mut self, limit: BindingLimit, elapsed: f64) -> PidsSeries {
        let window = self.settings.eta_window.as_secs_f64();
        let growth = self
            .limit_growth
            .entry(limit.cgroup.clone())
            .or_insert_with(|| GrowthTracker::new(window));
        growth.push(elapsed, limit.current as f64);
        PidsSeries {
            eta_seconds: growth.eta_seconds(limit.max as f64),
            cgroup: limit.cgroup,
            current: limit.current,
            max: limit.max,
        }
    }

    /// The kept labels of a cgroup path, and whether every pod name it calls for was found.
    fn labels(&mut self, path: &str) -> (CgroupLabels, bool) {
        let container = kubernetes::parse_path(path);
        let pod = self.pods.labels(&container);
        let complete = pod.complete_for(&container);
        let mut labels = [path.to_owned(), pod.namespace, pod.pod, pod.container];
        for (value, keep) in labels.iter_mut().zip(self.settings.keep_labels) {
            if !keep {
                value.clear();
            }
        }
        (labels, complete)
    }
}

/// Keeps the `limit` series with most to say (`--top-cgroups`): most unreaped zombies, then
/// the fullest pids.max, then the oldest zombie; in label order, as exported. The others keep
/// counting, and `reapwatch_node_zombies` still counts their zombies.
fn keep_most_pressed(cgroups: &mut Vec<CgroupSeries>, limit: usize) {
    if cgroups.len() <= limit {
        return;
    }
    let fill = |s: &CgroupSeries| {
        s.pids
            .as_ref()
            .map_or(0.0, |p| p.current as f64 / p.max.max(1) as f64)
    };
    cgroups.sort_by(|a, b| {
        b.zombies
            .cmp(&a.zombies)
            .then(fill(b).total_cmp(&fill(a)))
            .then(
                b.oldest_seconds
                    .unwrap_or(0.0)
                    .total_cmp(&a.oldest_seconds.unwrap_or(0.0)),
            )
    });
    cgroups.truncate(limit);
    cgroups.sort_by(|a, b| a.labels.cmp(&b.labels));
}

impl Sampler {
    /// The kubelet's thresholds on a node of `capacity` PIDs, and when `pid.available` (the
    /// capacity less every task) reaches the first of them.
    fn kubelet_series(&self, capacity: u64) -> KubeletSeries {
        let KubeletView::Known { eviction, .. } = self.kubelet.view() else {
            return KubeletSeries::default();
        };
        KubeletSeries {
            known: true,
            hard_threshold: eviction.hard.map(|t| t.pids(capacity)),
            soft_threshold: eviction.soft.map(|t| t.pids(capacity)),
            pressure_eta_seconds: eviction
                .first_threshold(capacity)
                .and_then(|t| self.watch.tasks_eta_seconds(capacity.saturating_sub(t))),
        }
    }
}

/// Gauges of series whose kept labels coincide are summed (their oldest zombie is the oldest
/// of all); their counters come from the ledger. Limits are not summed: the merged series
/// carries the binding one of its members, the least headroom (the same pod's limit bound by
/// each of its containers is one limit, not one per container).
fn merge(into: &mut CgroupSeries, series: CgroupSeries) {
    into.labels = series.labels;
    // Every id of a series shares its ledger totals: the last one fed has them all.
    if series.counters.is_some() {
        into.counters = series.counters;
    }
    into.zombies += series.zombies;
    into.oldest_seconds = match (into.oldest_seconds, series.oldest_seconds) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    into.pids = match (into.pids.take(), series.pids) {
        (Some(a), Some(b)) => Some(if b.headroom() < a.headroom() { b } else { a }),
        (a, b) => a.or(b),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(path: &str, zombies: u64, pids: Option<(u64, u64)>) -> CgroupSeries {
        CgroupSeries {
            labels: [path.to_owned(), String::new(), String::new(), String::new()],
            zombies,
            pids: pids.map(|(current, max)| PidsSeries {
                cgroup: path.to_owned(),
                current,
                max,
                eta_seconds: None,
            }),
            ..CgroupSeries::default()
        }
    }

    fn paths(cgroups: &[CgroupSeries]) -> Vec<&str> {
        cgroups.iter().map(|s| s.labels[0].as_str()).collect()
    }

    #[test]
    fn the_most_pressed_cgroups_are_kept_in_label_order() {
        let mut cgroups = vec![
            series("/a", 0, None),
            series("/b", 3, None),
            series("/c", 0, Some((90, 100))),
            series("/d", 7, None),
            series("/e", 0, Some((10, 100))),
        ];
        keep_most_pressed(&mut cgroups, 3);
        assert_eq!(paths(&cgroups), ["/b", "/c", "/d"]);
        keep_most_pressed(&mut cgroups, 5);
        assert_eq!(paths(&cgroups), ["/b", "/c", "/d"]);
    }
}
