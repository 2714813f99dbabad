//! Command-line interface.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{cgroup::HierarchyChoice, escape, kernel::MapSizes};

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
    pub pods: PodLogsArgs,

    #[command(flatten)]
    pub tracer: TracerArgs,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Time between refreshes, such as 500ms or 2s.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = positive_duration)]
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
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub watch: Option<Duration>,

    /// Time between samples with --watch.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = positive_duration)]
    pub interval: Duration,

    #[command(flatten)]
    pub pods: PodLogsArgs,

    #[command(flatten)]
    pub hierarchy: HierarchyArgs,
}

#[derive(Debug, Args)]
pub struct WhyArgs {
    /// The parent process to explain.
    pub pid: u32,

    /// How long to watch its wait() calls and zombies with eBPF (needs root; 0s to skip).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub watch: Duration,

    #[command(flatten)]
    pub pods: PodLogsArgs,

    #[command(flatten)]
    pub tracer: TracerArgs,
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
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub min_age: Option<Duration>,

    /// One JSON object per line (see README "reapwatch trace").
    #[arg(long)]
    pub json: bool,

    /// Stop after this long (e.g. 30s, 5m) instead of at Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub duration: Option<Duration>,

    /// Event ring buffer size in MiB; a full buffer loses events, which are counted.
    #[arg(long, value_name = "MIB", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub buffer_mib: u32,

    #[command(flatten)]
    pub pods: PodLogsArgs,

    #[command(flatten)]
    pub tracer: TracerArgs,
}

/// Every setting can also come from `--config`; a flag given here wins over the file. The
/// flags are `Option`s so that a flag left out lets the file's key through: their defaults
/// are in the doc text, in the paragraph clap gives its own defaults (`--help`).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the flags, without the dashes).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to serve on: IP:PORT, HOST:PORT or :PORT
    ///
    /// [default: 0.0.0.0:9750]
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub listen: Option<SocketAddr>,

    /// A second address that serves only /healthz and /readyz, over plain HTTP without
    /// authentication, for the kubelet's probes
    ///
    /// [default: none]
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub health_listen: Option<SocketAddr>,

    /// TLS and basic auth, in the web config format of the Prometheus exporter-toolkit
    /// (node_exporter's --web.config.file, also accepted); reloaded when it changes
    #[arg(long, value_name = "FILE", visible_alias = "web.config.file")]
    pub web_config_file: Option<PathBuf>,

    /// Parents exported per scrape, most unreaped children first
    ///
    /// [default: 20]
    #[arg(long, value_name = "K")]
    pub top_parents: Option<usize>,

    /// cgroups exported per scrape, most unreaped zombies first, then the fullest pids.max:
    /// a bound on per-cgroup series (ten at most each) whatever the node runs
    ///
    /// [default: no bound]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub top_cgroups: Option<u32>,

    /// Comma-separated labels to keep among cgroup, namespace, pod, container; series that
    /// differ only in dropped labels are summed
    ///
    /// [default: cgroup,namespace,pod,container]
    #[arg(long, value_name = "LABELS", value_delimiter = ',')]
    pub label_allow_list: Option<Vec<String>>,

    /// How long the series of a removed cgroup with nothing unreaped are kept
    ///
    /// [default: 10m]
    #[arg(long, value_name = "DURATION")]
    pub gc_grace: Option<String>,

    /// Window of the PID-exhaustion forecast
    ///
    /// [default: 15m]
    #[arg(long, value_name = "DURATION")]
    pub eta_window: Option<String>,

    /// How often the kernel maps and /proc headroom are sampled
    ///
    /// [default: 5s]
    #[arg(long, value_name = "DURATION")]
    pub sample_interval: Option<String>,

    /// How often all of /proc is scanned for zombies the programs missed
    ///
    /// [default: 60s]
    #[arg(long, value_name = "DURATION")]
    pub reconcile_interval: Option<String>,

    /// /healthz fails once the sampler has finished no sample for this long (or its thread
    /// ended); longer than three sample intervals, and far longer than a full /proc scan
    ///
    /// [default: 5m]
    #[arg(long, value_name = "DURATION")]
    pub liveness_timeout: Option<String>,

    /// Log level: error, warn, info or debug
    ///
    /// [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// kubelet's pod log directory as mounted here, for namespace/pod/container names
    ///
    /// [default: /var/log/pods]
    #[arg(long, value_name = "DIR")]
    pub pod_logs_dir: Option<PathBuf>,

    /// cgroup hierarchy that per-cgroup counters and cgroup paths refer to
    ///
    /// [default: auto]
    #[arg(long, value_name = "HIERARCHY", value_enum)]
    pub cgroup_hierarchy: Option<HierarchyChoice>,

    /// Per-cgroup series for all cgroups, or only the active ones: unreaped zombies, or a
    /// pids.max filling up or refusing forks, now or within --eta-window
    ///
    /// [default: all]
    #[arg(long, value_name = "SERIES", value_enum)]
    pub cgroup_series: Option<CgroupSeriesChoice>,

    /// Unreaped zombies tracked at once, node-wide
    ///
    /// [default: 65536]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_zombies: Option<u32>,

    /// cgroups with fork/exit/zombie counters
    ///
    /// [default: 16384]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_cgroups: Option<u32>,

    /// Processes whose last wait() is remembered
    ///
    /// [default: 65536]
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
    #[command(flatten)]
    pub hierarchy: HierarchyArgs,

    #[command(flatten)]
    pub maps: MapArgs,
}

/// Which cgroup paths the commands show.
#[derive(Debug, Args)]
pub struct HierarchyArgs {
    /// cgroup hierarchy that per-cgroup counters and cgroup paths refer to.
    #[arg(long, value_name = "HIERARCHY", value_enum, default_value_t)]
    pub cgroup_hierarchy: HierarchyChoice,
}

/// Kernel map capacities. When a map is full, what does not fit is counted as lost.
#[derive(Debug, Args)]
pub struct MapArgs {
    /// Unreaped zombies tracked at once, node-wide.
    #[arg(long, value_name = "N", default_value_t = MapSizes::default().zombies, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_zombies: u32,

    /// cgroups with fork/exit/zombie counters.
    #[arg(long, value_name = "N", default_value_t = MapSizes::default().cgroups, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_cgroups: u32,

    /// Processes whose last wait() is remembered.
    #[arg(long, value_name = "N", default_value_t = MapSizes::default().waits, value_parser = clap::value_parser!(u32).range(1..))]
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

/// Which cgroups get per-cgroup series.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupSeriesChoice {
    /// Every cgroup the programs counted.
    #[default]
    All,
    /// Only cgroups with something to say: unreaped zombies, or a pids.max filling up or
    /// refusing forks, now or within --eta-window.
    Active,
}

/// `--listen`: `IP:PORT`, `[IPv6]:PORT`, `HOST:PORT` (resolved once, at start-up; the first
/// address wins), or `:PORT` for every IPv4 address, as node_exporter takes it.
pub fn parse_listen(text: &str) -> std::result::Result<SocketAddr, String> {
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{text:?}: the port after ':' must be 0 to 65535"))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    // A host name with a port; a bare host or port is not an address to listen on.
    if text
        .rsplit_once(':')
        .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(format!(
            "{text:?} is not an address: expected IP:PORT, HOST:PORT or :PORT"
        ));
    }
    std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|err| format!("cannot resolve {text:?}: {err}"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// A duration flag or key, as humantime reads it (`500ms`, `30s`, `5m`, `1h`).
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|_| {
        format!(
            "invalid duration \"{}\": expected a number and a unit, such as 30s, 5m or 1h",
            escape::for_terminal(text.as_bytes())
        )
    })
}

/// Intervals, watches and a trace's length: zero would spin, or end before it starts.
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    let duration = duration(text)?;
    if duration.is_zero() {
        return Err(format!(
            "invalid duration \"{}\": must be more than zero",
            escape::for_terminal(text.as_bytes())
        ));
    }
    Ok(duration)
}

/// A usage error as one line: clap's message, its possible values and its tips (a similar
/// argument, the missing argument's name), without the usage and "--help" lines that follow.
pub fn usage_error_line(err: &clap::Error) -> String {
    if err.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return "a command is required (see reapwatch --help)".to_owned();
    }
    let text = err.to_string();
    let mut line = String::new();
    let mut in_usage = false;
    for part in text.lines().map(str::trim) {
        // The usage block runs from `Usage:` to the next blank line.
        in_usage = (in_usage || part.starts_with("Usage:")) && !part.is_empty();
        if in_usage || part.is_empty() || part.starts_with("For more information") {
            continue;
        }
        let part = part.strip_prefix("error: ").unwrap_or(part);
        if !line.is_empty() {
            // A list continues its line (`not provided: <PID>`, `[possible values: ...]`);
            // anything else is a clause of its own.
            line.push_str(if line.ends_with(':') || part.starts_with('[') {
                " "
            } else {
                "; "
            });
        }
        line.push_str(part);
    }
    escape::for_terminal(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn usage_error(argv: &[&str]) -> String {
        let mut full = vec!["reapwatch"];
        full.extend(argv);
        usage_error_line(&Cli::try_parse_from(full).unwrap_err())
    }

    #[test]
    fn usage_errors_keep_what_matters_on_one_line() {
        assert_eq!(
            usage_error(&["why"]),
            "the following required arguments were not provided: <PID>"
        );
        assert_eq!(
            usage_error(&["snapshot", "--cgroup-hierarchy", "v2"]),
            "invalid value 'v2' for '--cgroup-hierarchy <HIERARCHY>' \
             [possible values: auto, unified, pids]"
        );
        assert_eq!(
            usage_error(&["snapshot", "--jsn"]),
            "unexpected argument '--jsn' found; tip: a similar argument exists: '--json'"
        );
        assert_eq!(
            usage_error(&["trace", "--duration", "banana"]),
            "invalid value 'banana' for '--duration <DURATION>': invalid duration \"banana\": \
             expected a number and a unit, such as 30s, 5m or 1h"
        );
        assert_eq!(
            usage_error(&[]),
            "a command is required (see reapwatch --help)"
        );
    }

    #[test]
    fn usage_errors_escape_what_was_typed() {
        let line = usage_error(&["snapshot", "--cgroup-hierarchy", "\x1b[2Jx"]);
        assert!(!line.contains('\x1b'), "{line}");
        assert!(line.contains("\\x1b[2Jx"), "{line}");
    }

    #[test]
    fn listen_addresses_as_operators_type_them() {
        let v4 = |a: [u8; 4], port| SocketAddr::from((a, port));
        assert_eq!(parse_listen(":9755"), Ok(v4([0, 0, 0, 0], 9755)));
        assert_eq!(parse_listen("127.0.0.1:9755"), Ok(v4([127, 0, 0, 1], 9755)));
        assert_eq!(
            parse_listen("[::1]:9755"),
            Ok("[::1]:9755".parse().unwrap())
        );
        // A host name needs a resolver (a test VM's initramfs has none).
        if std::net::ToSocketAddrs::to_socket_addrs("localhost:1").is_ok() {
            assert!(parse_listen("localhost:9755")
                .is_ok_and(|a| a.ip().is_loopback() && a.port() == 9755));
        }
        for bad in [":", ":http", ":70000", "localhost", "9755", "", "a b:1"] {
            let err = parse_listen(bad).unwrap_err();
            assert_eq!(err.lines().count(), 1, "{bad:?}: {err}");
        }
    }

    #[test]
    fn durations_that_must_be_positive() {
        assert_eq!(positive_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(
            positive_duration("0s"),
            Err("invalid duration \"0s\": must be more than zero".to_owned())
        );
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        for argv in [
            ["top", "--interval", "0"],
            ["scan", "--interval", "0s"],
            ["scan", "--watch", "0s"],
            ["trace", "--duration", "0"],
        ] {
            let line = usage_error(&argv);
            assert!(line.ends_with("must be more than zero"), "{argv:?}: {line}");
        }
        assert!(Cli::try_parse_from(["reapwatch", "why", "1", "--watch", "0s"]).is_ok());
    }
}
