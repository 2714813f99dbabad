//! New connections a second, per source, on the metrics address: each one costs the serving
//! thread an accept, a TLS handshake and a request, and takes a slot, evicting the longest
//! held when all are taken. While the address is crowded (more than half its slots taken), a
//! source past its share has its new connections closed as soon as they are accepted.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    time::Instant,
};

/// New connections a second that a source may open on average, and in a burst: Prometheus
/// opens one per scrape (no keep-alive), a person with curl a few.
pub const PER_SECOND: f64 = 5.0;
pub const BURST: f64 = 10.0;
/// Sources followed at once; past it, the sources not yet followed share one allowance.
const MAX_SOURCES: usize = 4096;
/// Where the sources not followed are counted: an address no peer has.
const OTHERS: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

#[derive(Default)]
pub struct Admission {
    buckets: HashMap<IpAddr, Bucket>,
}

/// Connections `source` may still open, refilled at [`PER_SECOND`] up to [`BURST`].
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn now(self, now: Instant) -> f64 {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * PER_SECOND;
        (self.tokens + refill).min(BURST)
    }
}

impl Admission {
    /// Whether a new connection from `source` may be served.
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&source) && self.buckets.len() >= MAX_SOURCES {
            // A full bucket is as good as none.
            self.buckets.retain(|_, bucket| bucket.now(now) < BURST);
        }
        let key = if self.buckets.contains_key(&source) || self.buckets.len() < MAX_SOURCES {
            source
        } else {
            OTHERS
        };
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        let tokens = bucket.now(now);
        let admitted = tokens >= 1.0;
        *bucket = Bucket {
            tokens: if admitted { tokens - 1.0 } else { tokens },
            at: now,
        };
        admitted
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The time between connections of a source that keeps to the rate.
    const TICK: Duration = Duration::from_millis((1000.0 / PER_SECOND) as u64);

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(n.to_be_bytes())
    }

    #[test]
    fn a_burst_then_the_rate() {
        let now = Instant::now();
        let mut admission = Admission::default();
        let admitted = (0..100).filter(|_| admission.admit(ip(1), now)).count();
        assert_eq!(admitted, BURST as usize);
        assert!(admission.admit(ip(2), now), "another source has its own");
        assert!(!admission.admit(ip(1), now + TICK / 2));
        assert!(admission.admit(ip(1), now + TICK));
        // A source at the rate is never refused.
        let mut polite = Admission::default();
        assert!((0..1000).all(|n| polite.admit(ip(3), now + TICK * n)));
    }

    #[test]
    fn followed_sources_are_bounded() {
        let now = Instant::now();
        let mut admission = Admission::default();
        for n in 0..MAX_SOURCES as u32 * 2 {
            admission.admit(ip(n), now);
        }
        assert!(admission.buckets.len() <= MAX_SOURCES + 1);
        // Those not followed share one allowance; followed ones keep theirs.
        assert!(admission.admit(ip(0), now));
        let others = (0..100)
            .filter(|n| admission.admit(ip(1_000_000 + n), now))
            .count();
        assert!(others <= BURST as usize, "{others}");
    }
}
