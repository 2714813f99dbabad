//! Counters that never go down while the process lives, whatever happens to the cgroups
//! behind a series.
//!
//! A series is a set of label values, and several cgroup ids can feed one (labels dropped by
//! the allow-list, a cgroup removed and made again under the same path, a pod's names learnt
//! late). Summing the ids' raw counters would fall each time an id is collected or moves to
//! other labels, and Prometheus reads a fall as a reset. So each id adds only what it counted
//! since the last sample to the series it belongs to now, and a series that stops being
//! exported keeps its totals (up to a bound) in case it comes back.

use std::collections::HashMap;

use super::model::{CgroupLabels, SeriesCounters};

pub struct CounterLedger {
    /// Raw counters of each cgroup id at the last sample.
    last: HashMap<u64, SeriesCounters>,
    series: HashMap<CgroupLabels, Totals>,
    /// Series kept at most; beyond it, those retired longest ago are forgotten.
    capacity: usize,
    /// Samples so far: when each series was last fed.
    sample: u64,
}

struct Totals {
    counters: SeriesCounters,
    fed_in_sample: u64,
}

impl CounterLedger {
    pub fn new(capacity: usize) -> Self {
        Self {
            last: HashMap::new(),
            series: HashMap::new(),
            capacity: capacity.max(1),
            sample: 0,
        }
    }

    /// Starts a sample: every id that is still counted is fed again before [`Self::end`].
    pub fn begin(&mut self) {
        self.sample += 1;
    }

    /// Adds what cgroup `id` counted since the last sample to the series `labels`, and
    /// returns that series' totals and what was added.
    pub fn feed(
        &mut self,
        id: u64,
        raw: SeriesCounters,
        labels: &CgroupLabels,
    ) -> (SeriesCounters, SeriesCounters) {
        let before = self.last.insert(id, raw).unwrap_or_default();
        let delta = since(&raw, &before);
        let totals = match self.series.get_mut(labels) {
            Some(totals) => totals,
            None => self.series.entry(labels.clone()).or_insert(Totals {
                counters: SeriesCounters::default(),
                fed_in_sample: 0,
            }),
        };
        totals.fed_in_sample = self.sample;
        add(&mut totals.counters, &delta);
        (totals.counters, delta)
    }

    /// Ends a sample: ids not fed in it are gone (collected), and the oldest retired series
    /// are forgotten when there are too many.
    pub fn end(&mut self, fed: impl Fn(u64) -> bool) {
        self.last.retain(|&id, _| fed(id));
        if self.series.len() <= self.capacity {
            return;
        }
        let mut retired: Vec<(u64, CgroupLabels)> = self
            .series
            .iter()
            .filter(|(_, t)| t.fed_in_sample < self.sample)
            .map(|(labels, t)| (t.fed_in_sample, labels.clone()))
            .collect();
        retired.sort_unstable();
        // Down to three quarters, so that the sort is not paid on every sample.
        let excess = self.series.len() - self.capacity * 3 / 4;
        for (_, labels) in retired.into_iter().take(excess) {
            self.series.remove(&labels);
        }
    }

    #[cfg(test)]
    fn series_kept(&self) -> usize {
        self.series.len()
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

    fn exits(n: u64) -> SeriesCounters {
        SeriesCounters {
            exits: n,
            ..Default::default()
        }
    }

    #[test]
    fn a_cgroup_made_again_under_the_same_path_continues_its_series() {
        let mut ledger = CounterLedger::new(16);
        let x = labels("/x", "");
        ledger.begin();
        assert_eq!(ledger.feed(1, exits(4), &x).0.exits, 4);
        ledger.end(|id| id == 1);
        // Removed and collected: id 1 is no longer fed; id 2 is the new /x.
        ledger.begin();
        ledger.end(|_| false);
        ledger.begin();
        assert_eq!(ledger.feed(2, exits(3), &x).0.exits, 7);
        ledger.end(|id| id == 2);
    }

    #[test]
    fn merged_series_do_not_fall_when_a_member_goes() {
        let mut ledger = CounterLedger::new(16);
        let merged = labels("", "");
        ledger.begin();
        ledger.feed(1, exits(100), &merged);
        assert_eq!(ledger.feed(2, exits(41), &merged).0.exits, 141);
        ledger.end(|_| true);
        ledger.begin();
        assert_eq!(ledger.feed(2, exits(41), &merged).0.exits, 141);
        ledger.end(|id| id == 2);
    }

    #[test]
    fn labels_learnt_late_start_a_series_without_taking_from_the_old_one() {
        let mut ledger = CounterLedger::new(16);
        let (before, after) = (labels("/p", ""), labels("/p", "ns"));
        ledger.begin();
        assert_eq!(ledger.feed(1, exits(5), &before).0.exits, 5);
        ledger.end(|_| true);
        ledger.begin();
        assert_eq!(ledger.feed(1, exits(7), &after).0.exits, 2);
        ledger.end(|_| true);
        ledger.begin();
        assert_eq!(ledger.feed(3, exits(0), &before).0.exits, 5);
    }

    #[test]
    fn a_recreated_kernel_entry_counts_from_zero_again() {
        let mut ledger = CounterLedger::new(16);
        let x = labels("/x", "");
        ledger.begin();
        ledger.feed(1, exits(10), &x);
        ledger.begin();
        assert_eq!(ledger.feed(1, exits(2), &x).0.exits, 12);
    }

    #[test]
    fn retired_series_are_bounded() {
        let mut ledger = CounterLedger::new(8);
        for id in 0..100u64 {
            ledger.begin();
            ledger.feed(id, exits(1), &labels(&format!("/c{id}"), ""));
            ledger.end(|fed| fed == id);
            assert!(ledger.series_kept() <= 8, "{}", ledger.series_kept());
        }
        // The newest retired series are the ones kept.
        ledger.begin();
        assert_eq!(ledger.feed(1000, exits(0), &labels("/c99", "")).0.exits, 1);
    }
}
