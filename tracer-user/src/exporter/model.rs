//! What one sample of the tracer's state exports: plain data, rendered by `metrics`.

use tracer_common::{CgroupCounters, LifetimeHistogram};

/// Values of the per-cgroup labels, in `settings::CGROUP_LABELS` order; dropped labels are
/// empty strings and not rendered.
pub type CgroupLabels = [String; 4];

#[derive(Clone, Debug, Default)]
pub struct CgroupSeries {
    pub labels: CgroupLabels,
    pub zombies: u64,
    pub oldest_seconds: Option<f64>,
    /// Absent until the series' attribution has settled (see `sampler`).
    pub counters: Option<SeriesCounters>,
    pub pids: Option<PidsSeries>,
}

/// The counters of a per-cgroup series: the kernel programs' per-cgroup counters, and the
/// forks the cgroup's `pids.max` refused (`pids.events`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeriesCounters {
    pub forks: u64,
    pub exits: u64,
    pub zombies_created: u64,
    pub zombies_reaped: u64,
    pub pids_fork_failures: u64,
}

impl SeriesCounters {
    pub fn new(kernel: CgroupCounters, pids_fork_failures: u64) -> Self {
        Self {
            forks: kernel.forks,
            exits: kernel.exits,
            zombies_created: kernel.zombies_created,
            zombies_reaped: kernel.zombies_reaped,
            pids_fork_failures,
        }
    }
}

/// The binding pids limit of a series (see `CgroupHierarchy::binding_limit`): the `pids.max`
/// of the series' cgroup or of an ancestor, whichever has the least headroom.
#[derive(Clone, Debug, Default)]
pub struct PidsSeries {
    /// The cgroup that sets it.
    pub cgroup: String,
    /// That cgroup's `pids.current`.
    pub current: u64,
    pub max: u64,
    /// From that cgroup's own `pids.current` trend.
    pub eta_seconds: Option<f64>,
}

impl PidsSeries {
    pub fn headroom(&self) -> u64 {
        self.max.saturating_sub(self.current)
    }
}

#[derive(Clone, Debug)]
pub struct ParentSeries {
    pub labels: CgroupLabels,
    pub pid: u32,
    pub comm: String,
    pub zombies: u64,
    pub wait_age_seconds: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct NodeSeries {
    pub zombies: u64,
    pub tasks: u64,
    pub pid_max: u64,
    pub threads_max: u64,
    pub eta_seconds: Option<f64>,
    pub kubelet: KubeletSeries,
}

/// The kubelet's PID eviction as it will see this node.
#[derive(Clone, Copy, Debug, Default)]
pub struct KubeletSeries {
    /// Whether its settings were read whole: then a threshold it lacks is not set.
    pub known: bool,
    /// `pid.available` thresholds, in PIDs.
    pub hard_threshold: Option<u64>,
    pub soft_threshold: Option<u64>,
    /// Seconds until `pid.available` falls to the first threshold on the node forecast's
    /// trend.
    pub pressure_eta_seconds: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct Model {
    pub cgroups: Vec<CgroupSeries>,
    pub parents: Vec<ParentSeries>,
    pub node: NodeSeries,
    pub lifetimes: LifetimeHistogram,
    pub version: &'static str,
    pub kernel: String,
    pub events_lost: u64,
    pub maps: Vec<MapUsage>,
    /// `/proc` entries that could not be read or parsed, skipped.
    pub proc_skipped: u64,
    pub health: Health,
    /// The sample's number: scrapers are tracked by the numbers they fetched.
    pub sequence: u64,
}

/// How full one kernel map is, and how often it had no room.
#[derive(Clone, Copy, Debug)]
pub struct MapUsage {
    pub map: &'static str,
    pub entries: u64,
    /// Records it had no room for, since start.
    pub times_full: u64,
}

/// Whether sampling keeps up: set when a sample is published, not by the sample itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct Health {
    /// Samples that failed since start; the last good one is served meanwhile.
    pub sample_failures: u64,
    /// Unix time of the last good sample.
    pub last_sample_unix_seconds: f64,
}
