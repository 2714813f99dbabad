//! Command-line interface.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{cgroup::HierarchyChoice, kernel::MapSizes};

#[derive(Debug, Parser)]
#[command(
    name = "reapwatch",
    version,
    about = "Finds processes that exited and were never reaped (zombies), per parent and container"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve Prometheus metrics (/metrics), liveness (/healthz) and readiness (/readyz).
    Serve(Box<ServeArgs>),
    /// Load the tracer, reconcile with /proc, print every parent with unreaped children, exit.
    Snapshot(SnapshotArgs),
    /// Live full-screen table of the parents with unreaped children (plain tables when piped).
    Top(TopArgs),
    /// One line per process lifecycle event: fork, exit, zombie, reap, reparent, wait.
    Trace(TraceArgs),
    /// Zombies per parent and container, and PID headroom, from /proc alone (no eBPF, no root).
    Scan(ScanArgs),
    /// Everything that explains one parent's zombies.
    Why(WhyArgs),
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Print one JSON object (the stable contract for scripts; see README) instead of a table.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub tracer: TracerArgs,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Time between refreshes, such as 500ms or 2s.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::commands::top::parse_interval)]
    pub interval: Duration,

    /// Stop after N refreshes [default: until q, Ctrl-C or SIGTERM].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: Option<u64>,

    #[command(flatten)]
    pub pods: PodLogsArgs,

    #[command(flatten)]
    pub tracer: TracerArgs,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Print one JSON object: `parents` as in `snapshot --json`, plus `node` and `cgroups`.
    #[arg(long)]
    pub json: bool,

    /// Sample repeatedly for this long (e.g. 1m) to measure growth and the exhaustion ETA.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub watch: Option<std::time::Duration>,

    /// Time between samples with --watch.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: std::time::Duration,

    #[command(flatten)]
    pub pods: PodLogsArgs,
}

#[derive(Debug, Args)]
pub struct WhyArgs {
    /// The parent process to explain.
    pub pid: u32,

    /// How long to watch its wait() calls and zombies with eBPF (needs root; 0s to skip).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub watch: std::time::Duration,

    #[command(flatten)]
    pub pods: PodLogsArgs,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Only events of this process or of its children.
    #[arg(long)]
    pub pid: Option<u32>,

    /// Only events of processes with this command name.
    #[arg(long)]
    pub comm: Option<String>,

    /// Only events in this cgroup or below it (a path as /proc/<pid>/cgroup shows it).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,

    /// Only events in this container (its name, or a prefix of its ID).
    #[arg(long, value_name = "NAME")]
    pub container: Option<String>,

    /// Only zombie, reap and reparent events.
    #[arg(long)]
    pub zombies_only: bool,

    /// Show a zombie only once it has stayed unreaped this long (e.g. 5s), and its reap
    /// then: the exits a parent reaps at once stay out.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub min_age: Option<std::time::Duration>,

    /// One JSON object per line (see README "reapwatch trace").
    #[arg(long)]
    pub json: bool,

    /// Stop after this long (e.g. 30s, 5m) instead of at Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,

    /// Event ring buffer size in MiB; a full buffer loses events, which are counted.
    #[arg(long, value_name = "MIB", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub buffer_mib: u32,

    #[command(flatten)]
    pub pods: PodLogsArgs,

    #[command(flatten)]
    pub tracer: TracerArgs,
}

/// Every setting can also come from `--config`; a flag given here wins over the file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the flags, without dashes' prefix).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to serve on: IP:PORT, HOST:PORT or :PORT [default: 0.0.0.0:9750].
    #[arg(long, value_name = "ADDR", value_parser = crate::exporter::settings::parse_listen)]
    pub listen: Option<SocketAddr>,

    /// A second address that serves only /healthz and /readyz, over plain HTTP without
    /// authentication, for the kubelet's probes [default: none].
    #[arg(long, value_name = "ADDR", value_parser = crate::exporter::settings::parse_listen)]
    pub health_listen: Option<SocketAddr>,

    /// TLS and basic auth, in the web config format of the Prometheus exporter-toolkit
    /// (node_exporter's --web.config.file, also accepted); reloaded when it changes.
    #[arg(long, value_name = "FILE", visible_alias = "web.config.file")]
    pub web_config_file: Option<PathBuf>,

    /// Parents exported per scrape, most unreaped children first [default: 20].
    #[arg(long, value_name = "K")]
    pub top_parents: Option<usize>,

    /// Comma-separated labels to keep among cgroup,namespace,pod,container; series that
    /// differ only in dropped labels are summed [default: all four].
    #[arg(long, value_name = "LABELS", value_delimiter = ',')]
    pub label_allow_list: Option<Vec<String>>,

    /// How long the series of a removed cgroup with nothing unreaped are kept [default: 10m].
    #[arg(long, value_name = "DURATION")]
    pub gc_grace: Option<String>,

    /// Window of the PID-exhaustion forecast [default: 15m].
    #[arg(long, value_name = "DURATION")]
    pub eta_window: Option<String>,

    /// How often the kernel maps and /proc headroom are sampled [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub sample_interval: Option<String>,

    /// How often all of /proc is scanned for zombies the programs missed [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub reconcile_interval: Option<String>,

    /// kubelet's pod log directory as mounted here, for namespace/pod/container names
    /// [default: /var/log/pods].
    #[arg(long, value_name = "DIR")]
    pub pod_logs_dir: Option<PathBuf>,

    /// cgroup hierarchy to attribute by: auto, unified or pids [default: auto].
    #[arg(long, value_enum)]
    pub cgroup_hierarchy: Option<HierarchyChoice>,

    /// error, warn, info or debug [default: info].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Unreaped zombies tracked at once, node-wide [default: 65536].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_zombies: Option<u32>,

    /// cgroups with counters [default: 16384].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_cgroups: Option<u32>,

    /// Processes whose last wait() is remembered [default: 65536].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_waits: Option<u32>,
}

/// Where container names come from.
#[derive(Debug, Args)]
pub struct PodLogsArgs {
    /// kubelet's pod log directory as mounted here, for namespace/pod/container names.
    #[arg(long, value_name = "DIR", default_value = "/var/log/pods")]
    pub pod_logs_dir: PathBuf,
}

/// How the ad-hoc commands load the tracer.
#[derive(Debug, Args)]
pub struct TracerArgs {
    /// cgroup hierarchy that per-cgroup counters and cgroup paths refer to.
    #[arg(long, value_enum, default_value_t)]
    pub cgroup_hierarchy: HierarchyChoice,

    #[command(flatten)]
    pub maps: MapArgs,
}

/// Kernel map capacities. When a map is full, what does not fit is counted as lost.
#[derive(Debug, Args)]
pub struct MapArgs {
    /// Unreaped zombies tracked at once, node-wide.
    #[arg(long, default_value_t = MapSizes::default().zombies, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_zombies: u32,

    /// cgroups with fork/exit/zombie counters.
    #[arg(long, default_value_t = MapSizes::default().cgroups, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_cgroups: u32,

    /// Processes whose last wait() is remembered.
    #[arg(long, default_value_t = MapSizes::default().waits, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_waits: u32,
}

impl MapArgs {
    pub fn sizes(&self) -> MapSizes {
        MapSizes {
            zombies: self.max_zombies,
            cgroups: self.max_cgroups,
            waits: self.max_waits,
            ..MapSizes::default()
        }
    }
}
