//! The refresh loop `top` and `serve` share: the state engine kept true against `/proc` on one
//! schedule, and the node's exhaustion forecast fed from the same samples. Each turn yields a
//! [`Tick`]; `top` renders it, the exporter publishes it.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;
use tracer_common::Loss;

use crate::{
    forecast::GrowthTracker,
    procfs::{self, NodeLimits},
    state::{ParentState, StateEngine},
};

/// The state engine, its `/proc` scans and the node forecast, run one tick at a time.
pub struct Watch {
    engine: StateEngine,
    started: Instant,
    reconciles: ReconcileSchedule,
    node_growth: GrowthTracker,
}

/// What one turn of the watch saw.
pub struct Tick {
    /// Since the watch started: the clock the forecasts run on.
    pub elapsed: Duration,
    /// Whether this turn scanned all of `/proc`.
    pub reconciled: bool,
    /// Every parent with unreaped children, most children first.
    pub parents: Vec<ParentState>,
    pub node: NodeLimits,
    /// Seconds until the node's tasks reach its limit; None without a significant rising trend.
    pub node_eta_seconds: Option<f64>,
    /// History the node forecast still lacks before it can tell a trend from noise (until
    /// then its ETA is None whatever the tasks do); None once it has enough.
    pub forecast_measuring: Option<Duration>,
}

impl Watch {
    /// `forecast_window`: how far back the node forecast looks for a trend.
    pub fn new(engine: StateEngine, reconcile_every: Duration, forecast_window: Duration) -> Self {
        Self {
            engine,
            started: Instant::now(),
            reconciles: ReconcileSchedule::new(reconcile_every),
            node_growth: GrowthTracker::new(forecast_window.as_secs_f64()),
        }
    }

    pub fn engine(&self) -> &StateEngine {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut StateEngine {
        &mut self.engine
    }

    /// Scans all of `/proc` now, ahead of the first tick; the next scheduled scan is then a
    /// whole interval away.
    pub fn reconcile(&mut self) -> Result<()> {
        let now = Instant::now();
        let zombie_losses = self.zombie_losses()?;
        self.reconcile_at(now, zombie_losses)
    }

    /// One turn: a `/proc` scan if one is due, then the parents and the node's headroom.
    pub fn tick(&mut self) -> Result<Tick> {
        let now = Instant::now();
        let zombie_losses = self.zombie_losses()?;
        let reconciled = self.reconciles.due(now, zombie_losses);
        if reconciled {
            self.reconcile_at(now, zombie_losses)?;
        }
        let elapsed = now.duration_since(self.started);
        let parents = self.engine.parents()?;
        let node = procfs::read_node_limits(Path::new("/proc"))?;
        self.node_growth
            .push(elapsed.as_secs_f64(), node.tasks as f64);
        let history_needed = Duration::from_secs_f64(self.node_growth.history_needed_seconds());
        Ok(Tick {
            elapsed,
            reconciled,
            parents,
            node_eta_seconds: self.node_growth.eta_seconds(node.limit() as f64),
            node,
            forecast_measuring: history_needed
                .checked_sub(elapsed)
                .filter(|left| !left.is_zero()),
        })
    }

    /// Seconds until the node's tasks reach `tasks` on the node forecast's trend; None without
    /// a significant rising trend.
    pub fn tasks_eta_seconds(&self, tasks: u64) -> Option<f64> {
        self.node_growth.eta_seconds(tasks as f64)
    }

    fn reconcile_at(&mut self, now: Instant, zombie_losses: u64) -> Result<()> {
        self.engine.reconcile()?;
        self.reconciles.done(now, zombie_losses);
        Ok(())
    }

    /// Records the kernel's zombie map had no room for: zombies a scan has yet to find. Not
    /// [`StateEngine::losses`], which adds those a scan found and could not fit, already
    /// followed by the engine.
    fn zombie_losses(&self) -> Result<u64> {
        Ok(self.engine.probes().losses()?[Loss::ZombiesMapFull as usize])
    }
}

/// When to scan all of `/proc`: on a timer, and at once when the kernel's zombie map lost
/// records since the last scan, as those zombies are only found by one.
struct ReconcileSchedule {
    every: Duration,
    last: Option<Instant>,
    zombie_losses_at_last: u64,
}

impl ReconcileSchedule {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            zombie_losses_at_last: 0,
        }
    }

    fn due(&self, now: Instant, zombie_losses: u64) -> bool {
        zombie_losses > self.zombie_losses_at_last
            || self
                .last
                .is_none_or(|at| now.duration_since(at) >= self.every)
    }

    fn done(&mut self, at: Instant, zombie_losses: u64) {
        self.last = Some(at);
        self.zombie_losses_at_last = zombie_losses;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn reconciles_first_then_on_the_timer() {
        let start = Instant::now();
        let mut schedule = ReconcileSchedule::new(MINUTE);
        assert!(schedule.due(start, 0));
        schedule.done(start, 0);
        assert!(!schedule.due(start + MINUTE / 2, 0));
        assert!(schedule.due(start + MINUTE, 0));
    }

    #[test]
    fn a_new_zombie_map_loss_reconciles_at_once() {
        let start = Instant::now();
        let mut schedule = ReconcileSchedule::new(MINUTE);
        schedule.done(start, 3);
        assert!(!schedule.due(start + Duration::from_secs(1), 3));
        assert!(schedule.due(start + Duration::from_secs(1), 4));
        schedule.done(start + Duration::from_secs(1), 4);
        assert!(!schedule.due(start + Duration::from_secs(2), 4));
    }
}
