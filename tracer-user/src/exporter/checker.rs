//! bcrypt checks off the serving thread: one thread, made at start-up, works through a
//! bounded queue that holds at most one check per source, and takes first the source with
//! the fewest strikes lately: wrong passwords, and checks asked for while one of its own was
//! waiting. A source that floods wrong passwords waits behind every other; one that asks
//! one at a time and never failed (Prometheus after a restart or a password rotation) waits
//! for the check in progress at most, once each flooding source has a strike.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::sync::oneshot;

/// Checks waiting at once, each from a different source.
const MAX_PENDING: usize = 64;
/// Sources whose wrong passwords are remembered; past it, the better half is forgotten.
const MAX_REMEMBERED: usize = 4096;
/// How fast a source's count of wrong passwords fades: halved every this long.
const HALF_LIFE: Duration = Duration::from_secs(10);

pub struct Checker {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    work: Condvar,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Job>,
    /// The source of the check in progress.
    checking: Option<IpAddr>,
    strikes: HashMap<IpAddr, Recent>,
    next_seq: u64,
}

struct Job {
    source: IpAddr,
    seq: u64,
    password: Vec<u8>,
    hash: String,
    matched: oneshot::Sender<bool>,
}

/// A count fading with [`HALF_LIFE`].
#[derive(Clone, Copy)]
struct Recent {
    count: f64,
    at: Instant,
}

impl Recent {
    fn now(self, now: Instant) -> f64 {
        let age = now.saturating_duration_since(self.at).as_secs_f64();
        self.count * 0.5f64.powf(age / HALF_LIFE.as_secs_f64())
    }
}

impl Checker {
    /// Starts the checking thread: at start-up, for the node may be out of PIDs later.
    pub fn start() -> Result<Self> {
        let shared = Arc::new(Shared::default());
        let worker = shared.clone();
        thread::Builder::new()
            .name("bcrypt".to_owned())
            .spawn(move || worker.check_forever())
            .context("cannot start the bcrypt thread")?;
        Ok(Self { shared })
    }

    /// Whether `password` matches the bcrypt `hash`, checked in turn; None when `source`
    /// already has a check waiting or in progress, or the queue is full of sources that
    /// had no more strikes than it.
    pub async fn matches(&self, source: IpAddr, password: Vec<u8>, hash: String) -> Option<bool> {
        let (matched, answer) = oneshot::channel();
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enqueue(source, password, hash, matched)?;
        self.shared.work.notify_one();
        // Dropped unanswered when a better source took its place in a full queue.
        answer.await.ok()
    }
}

impl Shared {
    fn check_forever(&self) {
        loop {
            let job = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    if let Some(job) = queue.next(Instant::now()) {
                        break job;
                    }
                    queue = self.work.wait(queue).unwrap_or_else(|e| e.into_inner());
                }
            };
            let matched = bcrypt::verify(&job.password, &job.hash).unwrap_or(false);
            // Done before the answer, so that the source's next check is welcome.
            self.queue.lock().unwrap_or_else(|e| e.into_inner()).done(
                job.source,
                matched,
                Instant::now(),
            );
            // The asker may have gone (deadline, closed connection): nothing to tell.
            let _ = job.matched.send(matched);
        }
    }
}

impl Queue {
    /// Queues a check; None (and `matched` dropped) when it is refused.
    fn enqueue(
        &mut self,
        source: IpAddr,
        password: Vec<u8>,
        hash: String,
        matched: oneshot::Sender<bool>,
    ) -> Option<()> {
        let now = Instant::now();
        if self.checking == Some(source) || self.pending.iter().any(|job| job.source == source) {
            self.strike(source, now);
            return None;
        }
        if self.pending.len() >= MAX_PENDING {
            // The waiting source with most strikes gives its place, if more than this one.
            let newcomer = self.recent_strikes(source, now);
            let (worst, strikes) = self
                .pending
                .iter()
                .enumerate()
                .map(|(index, job)| (index, self.recent_strikes(job.source, now)))
                .max_by(|a, b| a.1.total_cmp(&b.1))?;
            if strikes <= newcomer {
                return None;
            }
            self.pending.swap_remove(worst);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push(Job {
            source,
            seq,
            password,
            hash,
            matched,
        });
        Some(())
    }

    /// The waiting check of the source with the fewest recent strikes (the longest waiting
    /// among equals).
    fn next(&mut self, now: Instant) -> Option<Job> {
        let strikes = |job: &Job| self.recent_strikes(job.source, now);
        let index = self
            .pending
            .iter()
            .enumerate()
            .min_by(|(_, a), (_, b)| strikes(a).total_cmp(&strikes(b)).then(a.seq.cmp(&b.seq)))
            .map(|(index, _)| index)?;
        let job = self.pending.swap_remove(index);
        self.checking = Some(job.source);
        Some(job)
    }

    /// The check in progress is over; a wrong password is a strike.
    fn done(&mut self, source: IpAddr, matched: bool, now: Instant) {
        self.checking = None;
        if !matched {
            self.strike(source, now);
        }
    }

    fn strike(&mut self, source: IpAddr, now: Instant) {
        let count = self.recent_strikes(source, now) + 1.0;
        self.strikes.insert(source, Recent { count, at: now });
        if self.strikes.len() > MAX_REMEMBERED {
            self.forget_better_half(now);
        }
    }

    fn recent_strikes(&self, source: IpAddr, now: Instant) -> f64 {
        self.strikes
            .get(&source)
            .map_or(0.0, |recent| recent.now(now))
    }

    /// Keeps the worse half: a flood from very many addresses makes some of them look new,
    /// never a source with fewer strikes look worse.
    fn forget_better_half(&mut self, now: Instant) {
        let mut counts: Vec<f64> = self.strikes.values().map(|r| r.now(now)).collect();
        let middle = counts.len() / 2;
        let (_, median, _) = counts.select_nth_unstable_by(middle, f64::total_cmp);
        let median = *median;
        self.strikes.retain(|_, recent| recent.now(now) > median);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn enqueue(queue: &mut Queue, source: IpAddr) -> Option<oneshot::Receiver<bool>> {
        let (matched, answer) = oneshot::channel();
        queue
            .enqueue(source, Vec::new(), String::new(), matched)
            .map(|()| answer)
    }

    #[test]
    fn one_check_per_source_and_the_fewest_strikes_first() {
        let now = Instant::now();
        let mut queue = Queue::default();
        // A flooder fails, and asks again while checked; a client that got in: no strike.
        for (source, matched) in [(ip(1), false), (ip(3), true)] {
            enqueue(&mut queue, source).unwrap();
            let job = queue.next(now).unwrap();
            if !matched {
                assert!(enqueue(&mut queue, source).is_none(), "one in progress");
            }
            queue.done(job.source, matched, now);
        }
        assert!(queue.recent_strikes(ip(1), now) > 1.9);
        // A new flooder: a second check while its first waits is refused, and a strike.
        enqueue(&mut queue, ip(4)).unwrap();
        assert!(enqueue(&mut queue, ip(4)).is_none(), "two at once");
        for source in [ip(1), ip(2), ip(3)] {
            enqueue(&mut queue, source).unwrap();
        }
        let mut order = Vec::new();
        while let Some(job) = queue.next(now) {
            order.push(job.source);
            queue.done(job.source, false, now);
        }
        assert_eq!(order, [ip(2), ip(3), ip(4), ip(1)]);
        // Forgiven as its strikes fade.
        assert!(queue.recent_strikes(ip(1), now + HALF_LIFE * 20) < 0.01);
    }

    #[test]
    fn a_full_queue_makes_room_for_a_source_with_fewer_strikes() {
        let now = Instant::now();
        let mut queue = Queue::default();
        let struck = |n: usize| IpAddr::from([10, 1, (n / 256) as u8, n as u8]);
        let five = Recent {
            count: 5.0,
            at: now,
        };
        for n in 0..MAX_PENDING {
            queue.strikes.insert(struck(n), five);
        }
        let mut waiting: Vec<_> = (0..MAX_PENDING)
            .map(|n| enqueue(&mut queue, struck(n)).unwrap())
            .collect();
        // As bad as those waiting: refused.
        queue.strikes.insert(ip(9), five);
        assert!(enqueue(&mut queue, ip(9)).is_none());
        // Better: one of the others is told to try again (its answer dropped).
        enqueue(&mut queue, ip(1)).unwrap();
        assert_eq!(queue.pending.len(), MAX_PENDING);
        let dropped = waiting
            .iter_mut()
            .filter_map(|answer| answer.try_recv().err())
            .filter(|err| *err == oneshot::error::TryRecvError::Closed)
            .count();
        assert_eq!(dropped, 1);
    }

    #[test]
    fn remembered_sources_are_bounded() {
        let now = Instant::now();
        let mut queue = Queue::default();
        for n in 0..=MAX_REMEMBERED as u32 {
            queue.done(IpAddr::from(n.to_be_bytes()), false, now);
        }
        assert!(queue.strikes.len() <= MAX_REMEMBERED);
    }
}
