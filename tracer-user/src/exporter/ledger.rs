//! Counters that never go down while the process lives, lose nothing, double nothing, and
//! reach Prometheus as increases.
//!
//! A series is a set of label values, and several cgroup ids can feed one (labels dropped by
//! the allow-list, a cgroup removed and made again under the same path, a pod's names learnt
//! late). Summing the ids' raw counters would fall each time an id is collected or moves to
//! other labels, and Prometheus reads a fall as a reset. So each id adds only what it counted
//! since the last sample to the series it belongs to now, and a series that stops being
//! exported keeps its totals (up to a bound) in case it comes back.
//!
//! Every id's last raw value is kept from the first sample that sees it, fed or not, until it
//! is collected: what it counts while its labels settle waits in the id and goes, once, to the
//! first series it feeds. An id missing from some samples (a pod's cgroup is sampled only
//! while its limit binds a container) adds only what it counted since when it is back.
//! An id collected before it ever fed a series gives its counts to its series on the way out,
//! and that series is shown until they have been scraped.
//!
//! Prometheus takes a series' first sample as a baseline, never as an increase. So a series
//! that appears (or comes back) shows the values it showed last, zero for a new one, until
//! every scraper has fetched those (see `scrapes`); only then does it move.

use std::{collections::HashMap, hash::Hash};

use tracer_common::CgroupCounters;

use super::model::{CgroupLabels, SeriesCounters};

pub struct CounterLedger {
    ids: HashMap<u64, IdCounts>,
    series: HashMap<CgroupLabels, Series>,
    /// Series, and ids missing from the samples, kept at most; beyond it, those retired or
    /// missing longest ago are forgotten.
    capacity: usize,
    /// Samples so far; the body of sample `n` is published as `n`.
    sample: u64,
}

/// One cgroup id's raw counters at the last sample, and what it counted that no series holds
/// yet.
#[derive(Default)]
struct IdCounts {
    raw: SeriesCounters,
    unfed: SeriesCounters,
    seen_in_sample: u64,
}

#[derive(Default)]
struct Series {
    totals: SeriesCounters,
    fed_in_sample: u64,
    /// What the last body that showed it holds (zero before the first).
    shown: SeriesCounters,
    /// The sample of that body; 0: never shown.
    shown_in_sample: u64,
    /// Since when `shown` has held these values.
    shown_since: u64,
    /// Held at `shown` since this sample's body appeared, until every scraper fetched it.
    held_since: Option<u64>,
    /// Its last id was collected: shown until its totals have been scraped.
    farewell: bool,
}

impl CounterLedger {
    pub fn new(capacity: usize) -> Self {
        Self {
            ids: HashMap::new(),
            series: HashMap::new(),
            capacity: capacity.max(1),
            sample: 0,
        }
    }

    /// Starts a sample, and returns its number.
    pub fn begin(&mut self) -> u64 {
        self.sample += 1;
        self.sample
    }

    /// Reads cgroup `id`'s raw counters at this sample (`fork_failures`: `None` when its
    /// `pids.events` could not be read, which keeps the last value); returns what it counted
    /// since the last sample.
    pub fn observe(
        &mut self,
        id: u64,
        kernel: CgroupCounters,
        fork_failures: Option<u64>,
    ) -> SeriesCounters {
        let counts = self.ids.entry(id).or_default();
        let raw = SeriesCounters::new(
            kernel,
            fork_failures.unwrap_or(counts.raw.pids_fork_failures),
        );
        let delta = since(&raw, &counts.raw);
        add(&mut counts.unfed, &delta);
        counts.raw = raw;
        counts.seen_in_sample = self.sample;
        delta
    }

    /// Gives what cgroup `id` counted and no series holds to the series `labels`.
    pub fn feed(&mut self, id: u64, labels: &CgroupLabels) {
        let unfed = self
            .ids
            .get_mut(&id)
            .map(|counts| std::mem::take(&mut counts.unfed))
            .unwrap_or_default();
        let sample = self.sample;
        let series = self.series_mut(labels);
        series.fed_in_sample = sample;
        add(&mut series.totals, &unfed);
    }

    /// Feeds a collected id's last counts to `labels`, whose series is then shown until they
    /// have been scraped (call [`Self::farewells`]).
    pub fn feed_last(&mut self, id: u64, labels: &CgroupLabels) {
        self.feed(id, labels);
        self.series_mut(labels).farewell = true;
    }

    /// The counters series `labels` shows in this sample's body; call it once a sample for
    /// each series the body holds. `scraped(n)`: whether every scraper fetched body `n`.
    pub fn show(
        &mut self,
        labels: &CgroupLabels,
        scraped: &impl Fn(u64) -> bool,
    ) -> SeriesCounters {
        let sample = self.sample;
        let series = self.series_mut(labels);
        let shown_last_sample = series.shown_in_sample > 0 && series.shown_in_sample + 1 == sample;
        if !shown_last_sample {
            // New to Prometheus, or back after an absence: its old values first.
            series.held_since = Some(sample);
        } else if series.held_since.is_some_and(scraped) {
            series.held_since = None;
        }
        if series.held_since.is_none() && series.shown != series.totals {
            series.shown = series.totals;
            series.shown_since = sample;
        }
        series.shown_in_sample = sample;
        series.shown
    }

    /// Series whose ids were collected and whose last counts are not scraped yet, with what
    /// this sample's body shows of them. Call it after [`Self::show`] for the others.
    pub fn farewells(
        &mut self,
        scraped: &impl Fn(u64) -> bool,
    ) -> Vec<(CgroupLabels, SeriesCounters)> {
        let sample = self.sample;
        let leaving: Vec<CgroupLabels> = self
            .series
            .iter_mut()
            .filter(|(_, series)| series.farewell && series.shown_in_sample != sample)
            .filter_map(|(labels, series)| {
                let scraped_all = series.shown_in_sample + 1 == sample
                    && series.held_since.is_none()
                    && series.shown == series.totals
                    && scraped(series.shown_since);
                if scraped_all {
                    series.farewell = false;
                    None
                } else {
                    Some(labels.clone())
                }
            })
            .collect();
        leaving
            .into_iter()
            .map(|labels| {
                let shown = self.show(&labels, scraped);
                (labels, shown)
            })
            .collect()
    }

    /// Cgroup `id` was collected: its kernel counters are dropped, so if it is ever seen
    /// again, it counts from zero.
    pub fn forget(&mut self, id: u64) {
        self.ids.remove(&id);
    }

    /// Ends a sample: when there are too many, the ids missing from the samples longest and
    /// the series retired longest ago are forgotten.
    pub fn end(&mut self) {
        let sample = self.sample;
        forget_oldest(&mut self.ids, self.capacity, |counts| {
            (counts.seen_in_sample < sample).then_some(counts.seen_in_sample)
        });
        forget_oldest(&mut self.series, self.capacity, |s| {
            let retired = s.fed_in_sample < sample && s.shown_in_sample < sample && !s.farewell;
            retired.then_some(s.fed_in_sample.max(s.shown_in_sample))
        });
    }

    fn series_mut(&mut self, labels: &CgroupLabels) -> &mut Series {
        if !self.series.contains_key(labels) {
            self.series.insert(labels.clone(), Series::default());
        }
        self.series.get_mut(labels).expect("inserted above")
    }

    #[cfg(test)]
    fn series_kept(&self) -> usize {
        self.series.len()
    }

    #[cfg(test)]
    fn ids_kept(&self) -> usize {
        self.ids.len()
    }
}

/// Past `capacity` entries, removes those whose `last_used` sample is oldest (None: in use,
/// kept), down to three quarters of it so that the sort is not paid on every sample.
fn forget_oldest<K: Clone + Ord + Hash, V>(
    map: &mut HashMap<K, V>,
    capacity: usize,
    last_used: impl Fn(&V) -> Option<u64>,
) {
    if map.len() <= capacity {
        return;
    }
    let mut unused: Vec<(u64, K)> = map
        .iter()
        .filter_map(|(key, value)| Some((last_used(value)?, key.clone())))
        .collect();
    unused.sort_unstable();
    let excess = map.len() - capacity * 3 / 4;
    for (_, key) in unused.into_iter().take(excess) {
        map.remove(&key);
    }
}

/// What a cgroup counted between two reads of its raw counters. A raw counter below its last
/// value was made again from zero (its kernel entry was dropped and recreated): all of it is
/// new.
fn since(now: &SeriesCounters, before: &SeriesCounters) -> SeriesCounters {
    let field = |now: u64, before: u64| if now >= before { now - before } else { now };
    SeriesCounters {
        forks: field(now.forks, before.forks),
        exits: field(now.exits, before.exits),
        zombies_created: field(now.zombies_created, before.zombies_created),
        zombies_reaped: field(now.zombies_reaped, before.zombies_reaped),
        pids_fork_failures: field(now.pids_fork_failures, before.pids_fork_failures),
    }
}

fn add(into: &mut SeriesCounters, delta: &SeriesCounters) {
    into.forks += delta.forks;
    into.exits += delta.exits;
    into.zombies_created += delta.zombies_created;
    into.zombies_reaped += delta.zombies_reaped;
    into.pids_fork_failures += delta.pids_fork_failures;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(cgroup: &str, namespace: &str) -> CgroupLabels {
        [
            cgroup.to_owned(),
            namespace.to_owned(),
            String::new(),
            String::new(),
        ]
    }

    fn exits(n: u64) -> CgroupCounters {
        CgroupCounters {
            exits: n,
            ..Default::default()
        }
    }

    impl CounterLedger {
        fn totals(&self, labels: &CgroupLabels) -> SeriesCounters {
            self.series
                .get(labels)
                .map(|s| s.totals)
                .unwrap_or_default()
        }
    }

    /// Observes `id` at `n` raw exits and feeds it to `labels`; the series' exits.
    fn feed(ledger: &mut CounterLedger, id: u64, n: u64, labels: &CgroupLabels) -> u64 {
        ledger.observe(id, exits(n), Some(0));
        ledger.feed(id, labels);
        ledger.totals(labels).exits
    }

    const SCRAPED: fn(u64) -> bool = |_| true;
    const NOT_SCRAPED: fn(u64) -> bool = |_| false;

    #[test]
    fn a_cgroup_made_again_under_the_same_path_continues_its_series() {
        let mut ledger = CounterLedger::new(16);
        let x = labels("/x", "");
        ledger.begin();
        assert_eq!(feed(&mut ledger, 1, 4, &x), 4);
        ledger.end();
        // Removed and collected: id 1 is no longer seen; id 2 is the new /x.
        ledger.begin();
        ledger.end();
        ledger.begin();
        assert_eq!(feed(&mut ledger, 2, 3, &x), 7);
        ledger.end();
    }

    #[test]
    fn merged_series_do_not_fall_when_a_member_goes() {
        let mut ledger = CounterLedger::new(16);
        let merged = labels("", "");
        ledger.begin();
        feed(&mut ledger, 1, 100, &merged);
        assert_eq!(feed(&mut ledger, 2, 41, &merged), 141);
        ledger.end();
        ledger.begin();
        assert_eq!(feed(&mut ledger, 2, 41, &merged), 141);
        ledger.end();
    }

    #[test]
    fn labels_learnt_late_start_a_series_without_taking_from_the_old_one() {
        let mut ledger = CounterLedger::new(16);
        let (before, after) = (labels("/p", ""), labels("/p", "ns"));
        ledger.begin();
        assert_eq!(feed(&mut ledger, 1, 5, &before), 5);
        ledger.end();
        ledger.begin();
        assert_eq!(feed(&mut ledger, 1, 7, &after), 2);
        ledger.end();
        ledger.begin();
        assert_eq!(feed(&mut ledger, 3, 0, &before), 5);
    }

    #[test]
    fn a_recreated_kernel_entry_counts_from_zero_again() {
        let mut ledger = CounterLedger::new(16);
        let x = labels("/x", "");
        ledger.begin();
        feed(&mut ledger, 1, 10, &x);
        ledger.begin();
        assert_eq!(feed(&mut ledger, 1, 2, &x), 12);
    }

    /// Seen while its labels settle, fed, not fed for a sample (its pod names went
    /// missing), fed again: every count once.
    #[test]
    fn an_id_not_fed_for_a_while_is_counted_once() {
        let mut ledger = CounterLedger::new(16);
        let x = labels("/x", "");
        for (n, fed) in [(5, false), (7, true), (7, false), (9, true)] {
            ledger.begin();
            ledger.observe(1, exits(n), Some(0));
            if fed {
                ledger.feed(1, &x);
            }
            ledger.end();
        }
        assert_eq!(ledger.totals(&x).exits, 9);
    }

    #[test]
    fn unreadable_fork_failures_keep_their_last_value() {
        let mut ledger = CounterLedger::new(16);
        let x = labels("/x", "");
        for failures in [Some(3), None, Some(3), Some(4)] {
            ledger.begin();
            ledger.observe(1, exits(0), failures);
            ledger.feed(1, &x);
            ledger.end();
        }
        assert_eq!(ledger.totals(&x).pids_fork_failures, 4);
    }

    /// Prometheus must see the series at zero before the burst that made it.
    #[test]
    fn a_new_series_shows_zero_until_every_scraper_fetched_it() {
        let mut ledger = CounterLedger::new(16);
        let x = labels("/x", "");
        let mut shown = Vec::new();
        for scraped in [NOT_SCRAPED, NOT_SCRAPED, SCRAPED, SCRAPED] {
            ledger.begin();
            feed(&mut ledger, 1, 5, &x);
            shown.push(ledger.show(&x, &scraped).exits);
            ledger.end();
        }
        assert_eq!(shown, [0, 0, 5, 5]);
    }

    #[test]
    fn a_series_back_after_an_absence_shows_its_last_values_first() {
        let mut ledger = CounterLedger::new(16);
        let x = labels("/x", "");
        let mut shown = Vec::new();
        for (n, show) in [(5, true), (5, true), (8, false), (9, true), (9, true)] {
            ledger.begin();
            feed(&mut ledger, 1, n, &x);
            if show {
                shown.push(ledger.show(&x, &SCRAPED).exits);
            }
            ledger.end();
        }
        assert_eq!(shown, [0, 5, 5, 9]);
    }

    /// `--gc-grace 0s`: collected before its labels settled, it still shows its counts.
    #[test]
    fn a_collected_id_shows_its_last_counts_before_it_goes() {
        let mut ledger = CounterLedger::new(16);
        let x = labels("/x", "");
        ledger.begin();
        ledger.observe(1, exits(3), Some(0));
        ledger.end();
        ledger.begin();
        ledger.observe(1, exits(4), Some(0));
        ledger.feed_last(1, &x);
        assert_eq!(ledger.farewells(&SCRAPED), [(x.clone(), exits_only(0))]);
        ledger.end();
        let mut shown = Vec::new();
        for scraped in [NOT_SCRAPED, SCRAPED, NOT_SCRAPED, SCRAPED, SCRAPED] {
            ledger.begin();
            shown.push(ledger.farewells(&scraped));
            ledger.end();
        }
        assert_eq!(
            shown,
            [
                vec![(x.clone(), exits_only(0))],
                vec![(x.clone(), exits_only(4))],
                vec![(x.clone(), exits_only(4))],
                vec![],
                vec![],
            ]
        );
    }

    fn exits_only(n: u64) -> SeriesCounters {
        SeriesCounters {
            exits: n,
            ..Default::default()
        }
    }

    /// Observes `id` at `failures` refused forks in each sample where it is `Some`, skipping
    /// the samples where it is `None` (as a pod's cgroup drops out of the samples while no
    /// container is bound by its limit), feeding `labels`; what the series shows after each
    /// sample that has it.
    fn skipping(failures: &[Option<u64>], labels: &CgroupLabels) -> (CounterLedger, Vec<u64>) {
        let mut ledger = CounterLedger::new(16);
        let mut shown = Vec::new();
        for &failures in failures {
            ledger.begin();
            if let Some(n) = failures {
                ledger.observe(1, exits(0), Some(n));
                ledger.feed(1, labels);
                shown.push(ledger.show(labels, &SCRAPED).pids_fork_failures);
            }
            ledger.end();
        }
        (ledger, shown)
    }

    /// An id missing from a sample without being collected still has its raw counters when
    /// it comes back: only what it counted since is new.
    #[test]
    fn an_id_missing_from_a_sample_counts_only_what_it_counted_since() {
        let x = labels("/pod", "");
        let (ledger, shown) = skipping(&[Some(5), None, Some(5), Some(6)], &x);
        assert_eq!(ledger.totals(&x).pids_fork_failures, 6);
        // New: zero first; back after an absence: the values it showed last (zero) first.
        assert_eq!(shown, [0, 0, 6]);
    }

    #[test]
    fn an_id_never_seen_in_consecutive_samples_counts_each_refusal_once() {
        let x = labels("/pod", "");
        let (ledger, shown) = skipping(&[Some(1), None, Some(2), None, Some(3), None], &x);
        assert_eq!(ledger.totals(&x).pids_fork_failures, 3);
        // Never shown two samples in a row: never moved past what Prometheus saw first.
        assert_eq!(shown, [0, 0, 0]);
    }

    #[test]
    fn a_collected_id_seen_again_counts_from_zero() {
        let mut ledger = CounterLedger::new(16);
        let x = labels("/x", "");
        ledger.begin();
        feed(&mut ledger, 1, 10, &x);
        ledger.forget(1);
        ledger.end();
        // Its kernel entry made again by a late event, and past its old value by now.
        ledger.begin();
        assert_eq!(feed(&mut ledger, 1, 12, &x), 22);
        ledger.end();
    }

    #[test]
    fn ids_missing_from_the_samples_are_bounded() {
        let mut ledger = CounterLedger::new(8);
        for id in 0..100u64 {
            ledger.begin();
            feed(&mut ledger, id, 1, &labels("/c", ""));
            ledger.end();
            assert!(ledger.ids_kept() <= 8, "{}", ledger.ids_kept());
        }
        // The ones missing most recently are kept: back, they add nothing.
        ledger.begin();
        assert_eq!(feed(&mut ledger, 99, 1, &labels("/c", "")), 100);
    }

    #[test]
    fn retired_series_are_bounded() {
        let mut ledger = CounterLedger::new(8);
        for id in 0..100u64 {
            ledger.begin();
            feed(&mut ledger, id, 1, &labels(&format!("/c{id}"), ""));
            ledger.end();
            assert!(ledger.series_kept() <= 8, "{}", ledger.series_kept());
        }
        // The newest retired series are the ones kept.
        ledger.begin();
        assert_eq!(feed(&mut ledger, 1000, 0, &labels("/c99", "")), 1);
    }
}
