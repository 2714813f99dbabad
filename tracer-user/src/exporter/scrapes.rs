//! Who fetched which sample: a series new to Prometheus must be seen at its old value (zero)
//! by every scraper before it moves, or its first increase is lost (see `ledger`).
//!
//! A scraper is a peer address and the `User-Agent` it sends: two Prometheus replicas of an HA
//! pair have different addresses, and a person's curl beside Prometheus another agent.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// A scraper that has not fetched for this long is gone: Prometheus' lookback window, past
/// which it forgets a series anyway.
const GONE_AFTER: Duration = Duration::from_secs(300);
/// Scrapers remembered; the longest silent is forgotten first. The agent is the client's to
/// choose: a client that invents agents only pushes out others, which then count as gone.
const MAX_SCRAPERS: usize = 64;
/// Bytes of the agent kept (Prometheus sends `Prometheus/2.42.0`).
const AGENT_BYTES: usize = 64;

#[derive(Clone, PartialEq, Eq, Hash)]
struct Scraper {
    peer: IpAddr,
    agent: Vec<u8>,
}

struct Fetch {
    at: Instant,
    sample: u64,
}

#[derive(Default)]
pub struct ScrapeLog {
    fetches: Mutex<HashMap<Scraper, Fetch>>,
}

impl ScrapeLog {
    /// `peer` (agent `agent`) fetched the body of sample `sample` at `now`.
    pub fn fetched(&self, peer: IpAddr, agent: &[u8], sample: u64, now: Instant) {
        let scraper = Scraper {
            peer,
            agent: agent[..agent.len().min(AGENT_BYTES)].to_vec(),
        };
        let mut fetches = self.lock();
        if fetches.len() >= MAX_SCRAPERS && !fetches.contains_key(&scraper) {
            let silent = fetches
                .iter()
                .min_by_key(|(_, fetch)| fetch.at)
                .map(|(scraper, _)| scraper.clone());
            if let Some(silent) = silent {
                fetches.remove(&silent);
            }
        }
        let fetch = fetches.entry(scraper).or_insert(Fetch { at: now, sample });
        fetch.at = now;
        fetch.sample = fetch.sample.max(sample);
    }

    /// Whether every scraper that is not gone has fetched the body of `sample` or a later
    /// one. With no scraper at all, nobody can miss anything: true.
    pub fn fetched_by_all(&self, sample: u64, now: Instant) -> bool {
        self.lock()
            .values()
            .filter(|fetch| now.saturating_duration_since(fetch.at) < GONE_AFTER)
            .all(|fetch| fetch.sample >= sample)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Scraper, Fetch>> {
        self.fetches.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const PROMETHEUS: &[u8] = b"Prometheus/2.42.0";

    fn peer(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn every_replica_must_fetch_the_sample() {
        let (log, now) = (ScrapeLog::default(), Instant::now());
        assert!(log.fetched_by_all(1, now), "nobody scrapes");
        log.fetched(peer(1), PROMETHEUS, 1, now);
        log.fetched(peer(2), PROMETHEUS, 0, now);
        assert!(!log.fetched_by_all(1, now));
        log.fetched(peer(2), PROMETHEUS, 1, now);
        assert!(log.fetched_by_all(1, now));
        assert!(!log.fetched_by_all(2, now));
    }

    #[test]
    fn another_agent_at_the_same_address_does_not_fetch_for_prometheus() {
        let (log, now) = (ScrapeLog::default(), Instant::now());
        log.fetched(peer(1), PROMETHEUS, 3, now);
        log.fetched(peer(1), b"curl/8.14.1", 4, now);
        assert!(!log.fetched_by_all(4, now));
    }

    #[test]
    fn a_scraper_silent_past_the_lookback_window_is_gone() {
        let (log, now) = (ScrapeLog::default(), Instant::now());
        log.fetched(peer(1), PROMETHEUS, 1, now);
        log.fetched(peer(2), PROMETHEUS, 5, now + GONE_AFTER);
        assert!(log.fetched_by_all(5, now + GONE_AFTER));
    }

    #[test]
    fn invented_agents_are_bounded() {
        let (log, now) = (ScrapeLog::default(), Instant::now());
        for n in 0..1000u32 {
            log.fetched(peer(9), n.to_string().as_bytes(), 0, now);
        }
        assert!(log.lock().len() <= MAX_SCRAPERS);
    }
}
