//! `reapwatch serve` settings: flags over an optional TOML file over defaults.

use std::{net::SocketAddr, os::unix::ffi::OsStrExt, path::PathBuf, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use crate::{
    cgroup::HierarchyChoice,
    cli::{self, parse_listen, CgroupSeriesChoice, ServeArgs},
    escape,
    kernel::MapSizes,
};

/// Default of `--liveness-timeout`: the slowest full `/proc` scan measured with 100 000
/// zombies (README, "Liveness") many times over, so a crowded node is never mistaken for a
/// stuck sampler, and short enough that a dead one is restarted within minutes.
const LIVENESS_TIMEOUT: &str = "5m";

/// The labels of per-cgroup series, in exposition order.
pub const CGROUP_LABELS: [&str; 4] = ["cgroup", "namespace", "pod", "container"];

#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub health_listen: Option<SocketAddr>,
    pub web_config_file: Option<PathBuf>,
    pub top_parents: usize,
    /// At most this many per-cgroup series (None: every cgroup `cgroup_series` selects).
    pub top_cgroups: Option<usize>,
    /// Which of [`CGROUP_LABELS`] are kept.
    pub keep_labels: [bool; 4],
    pub gc_grace: Duration,
    pub eta_window: Duration,
    pub sample_interval: Duration,
    pub reconcile_interval: Duration,
    pub liveness_timeout: Duration,
    pub pod_logs_dir: PathBuf,
    pub log_level: log::LevelFilter,
    pub map_sizes: MapSizes,
    pub cgroup_hierarchy: HierarchyChoice,
    pub cgroup_series: CgroupSeriesChoice,
}

/// The config file: the flags' names in kebab-case, every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileSettings {
    listen: Option<String>,
    health_listen: Option<String>,
    web_config_file: Option<PathBuf>,
    top_parents: Option<usize>,
    top_cgroups: Option<u32>,
    label_allow_list: Option<Vec<String>>,
    gc_grace: Option<String>,
    eta_window: Option<String>,
    sample_interval: Option<String>,
    reconcile_interval: Option<String>,
    liveness_timeout: Option<String>,
    pod_logs_dir: Option<PathBuf>,
    log_level: Option<String>,
    cgroup_hierarchy: Option<HierarchyChoice>,
    cgroup_series: Option<CgroupSeriesChoice>,
    max_zombies: Option<u32>,
    max_cgroups: Option<u32>,
    max_waits: Option<u32>,
}

impl Settings {
    pub fn resolve(args: &ServeArgs) -> Result<Self> {
        let file = match &args.config {
            Some(path) => {
                let shown = escape::for_terminal(path.as_os_str().as_bytes());
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config {shown}"))?;
                parse_file(&text).map_err(|err| anyhow!("invalid config {shown}, {err}"))?
            }
            None => FileSettings::default(),
        };
        Self::merge(args, file)
    }

    /// Flags over the file's keys over defaults.
    fn merge(args: &ServeArgs, file: FileSettings) -> Result<Self> {
        let defaults = MapSizes::default();
        // Intervals and the window must be positive, as the other commands' intervals; a zero
        // grace is not (series go at once).
        let duration = |flag: &Option<String>, key: &Option<String>, name: &str, default: &str| {
            let text = flag.as_deref().or(key.as_deref()).unwrap_or(default);
            let parse = match name {
                "gc-grace" => cli::duration,
                _ => cli::positive_duration,
            };
            parse(text).map_err(|err| match &args.config {
                Some(path) if flag.is_none() => anyhow!(
                    "invalid config {}, key {name}: {err}",
                    escape::for_terminal(path.as_os_str().as_bytes())
                ),
                _ => anyhow!("--{name}: {err}"),
            })
        };
        let labels = args
            .label_allow_list
            .clone()
            .or(file.label_allow_list)
            .unwrap_or_else(|| CGROUP_LABELS.map(str::to_owned).to_vec());
        let sample_interval = duration(
            &args.sample_interval,
            &file.sample_interval,
            "sample-interval",
            "5s",
        )?;
        let liveness_timeout = duration(
            &args.liveness_timeout,
            &file.liveness_timeout,
            "liveness-timeout",
            LIVENESS_TIMEOUT,
        )?;
        // Shorter, a sampler that is only late (not ready) would be restarted.
        if liveness_timeout <= sample_interval.saturating_mul(3) {
            bail!(
                "--liveness-timeout ({}) must be longer than three --sample-interval ({})",
                humantime::format_duration(liveness_timeout),
                humantime::format_duration(sample_interval)
            );
        }
        Ok(Self {
            listen: address(args.listen, file.listen.as_deref(), "listen")?
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 9750))),
            health_listen: address(
                args.health_listen,
                file.health_listen.as_deref(),
                "health-listen",
            )?,
            web_config_file: args.web_config_file.clone().or(file.web_config_file),
            top_parents: args.top_parents.or(file.top_parents).unwrap_or(20),
            top_cgroups: match args.top_cgroups.or(file.top_cgroups) {
                Some(0) => bail!("--top-cgroups: must be at least 1"),
                n => n.map(|n| n as usize),
            },
            keep_labels: keep_labels(&labels)?,
            gc_grace: duration(&args.gc_grace, &file.gc_grace, "gc-grace", "10m")?,
            eta_window: duration(&args.eta_window, &file.eta_window, "eta-window", "15m")?,
            sample_interval,
            liveness_timeout,
            reconcile_interval: duration(
                &args.reconcile_interval,
                &file.reconcile_interval,
                "reconcile-interval",
                "60s",
            )?,
            pod_logs_dir: args
                .pod_logs_dir
                .clone()
                .or(file.pod_logs_dir)
                .unwrap_or_else(|| PathBuf::from("/var/log/pods")),
            log_level: parse_level(
                args.log_level
                    .as_deref()
                    .or(file.log_level.as_deref())
                    .unwrap_or("info"),
            )?,
            cgroup_series: args
                .cgroup_series
                .or(file.cgroup_series)
                .unwrap_or_default(),
            cgroup_hierarchy: args
                .cgroup_hierarchy
                .or(file.cgroup_hierarchy)
                .unwrap_or_default(),
            map_sizes: MapSizes {
                zombies: args
                    .max_zombies
                    .or(file.max_zombies)
                    .unwrap_or(defaults.zombies),
                cgroups: args
                    .max_cgroups
                    .or(file.max_cgroups)
                    .unwrap_or(defaults.cgroups),
                waits: args.max_waits.or(file.max_waits).unwrap_or(defaults.waits),
                event_buffer: 0,
            },
        })
    }
}

/// The config file's keys. The error is one line that says where: `line 3, key eta-window:
/// invalid string`, escaped, for it echoes the file.
fn parse_file(text: &str) -> std::result::Result<FileSettings, String> {
    toml::from_str::<FileSettings>(text).map_err(|err| {
        let message = err
            .message()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let place = err.span().map_or(String::new(), |span| {
            let start = span.start.min(text.len());
            let number = text.as_bytes()[..start]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            let line = text.lines().nth(number - 1).unwrap_or_default();
            // The key is what precedes `=` on that line, when that is a key at all.
            match line.split_once('=').map(|(key, _)| key.trim()) {
                Some(key) if !key.is_empty() && !key.contains(['"', '\'', '[', '#']) => {
                    format!("line {number}, key {key}: ")
                }
                _ => format!("line {number}: "),
            }
        });
        escape::for_terminal(format!("{place}{message}").as_bytes())
    })
}

/// An address flag over its key in the file.
fn address(flag: Option<SocketAddr>, key: Option<&str>, name: &str) -> Result<Option<SocketAddr>> {
    match (flag, key) {
        (Some(flag), _) => Ok(Some(flag)),
        (None, Some(key)) => parse_listen(key)
            .map(Some)
            .map_err(|err| anyhow!("invalid {name}: {err}")),
        (None, None) => Ok(None),
    }
}

fn parse_level(text: &str) -> Result<log::LevelFilter> {
    match text {
        "error" => Ok(log::LevelFilter::Error),
        "warn" => Ok(log::LevelFilter::Warn),
        "info" => Ok(log::LevelFilter::Info),
        "debug" => Ok(log::LevelFilter::Debug),
        other => bail!("invalid --log-level {other:?}: use error, warn, info or debug"),
    }
}

fn keep_labels(names: &[String]) -> Result<[bool; 4]> {
    let mut keep = [false; 4];
    for name in names {
        let Some(index) = CGROUP_LABELS.iter().position(|l| l == name) else {
            bail!(
                "invalid --label-allow-list entry {name:?}: use cgroup, namespace, pod, container"
            );
        };
        keep[index] = true;
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    pub(super) fn serve_args(argv: &[&str]) -> ServeArgs {
        let mut full = vec!["reapwatch", "serve"];
        full.extend(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Serve(args) => *args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults() {
        let s = Settings::resolve(&serve_args(&[])).unwrap();
        assert_eq!(s.listen, "0.0.0.0:9750".parse().unwrap());
        assert_eq!(s.top_parents, 20);
        assert_eq!(s.keep_labels, [true; 4]);
        assert_eq!(s.eta_window, Duration::from_secs(900));
        assert_eq!(s.gc_grace, Duration::from_secs(600));
    }

    #[test]
    fn top_cgroups_is_unbounded_unless_asked_and_never_zero() {
        assert_eq!(
            Settings::resolve(&serve_args(&[])).unwrap().top_cgroups,
            None
        );
        let s = Settings::resolve(&serve_args(&["--top-cgroups", "50"])).unwrap();
        assert_eq!(s.top_cgroups, Some(50));
        assert!(Cli::try_parse_from(["reapwatch", "serve", "--top-cgroups", "0"]).is_err());
        let zero = parse_file("top-cgroups = 0\n").unwrap();
        let err = Settings::merge(&serve_args(&[]), zero).unwrap_err();
        assert_eq!(err.to_string(), "--top-cgroups: must be at least 1");
    }

    #[test]
    fn flags_win_over_the_file() {
        let path =
            std::env::temp_dir().join(format!("reapwatch-settings-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9999\"\ntop-parents = 5\nlabel-allow-list = [\"namespace\", \"pod\"]\neta-window = \"30m\"\n",
        )
        .unwrap();
        let config = path.to_str().unwrap();
        let s =
            Settings::resolve(&serve_args(&["--config", config, "--top-parents", "7"])).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(s.listen, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(s.top_parents, 7);
        assert_eq!(s.keep_labels, [false, true, true, false]);
        assert_eq!(s.eta_window, Duration::from_secs(1800));
    }

    #[test]
    fn web_config_and_health_address_from_the_file() {
        let path =
            std::env::temp_dir().join(format!("reapwatch-web-keys-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "web-config-file = \"/etc/reapwatch/web.yml\"\nhealth-listen = \":9751\"\n",
        )
        .unwrap();
        let s = Settings::resolve(&serve_args(&["--config", path.to_str().unwrap()])).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            s.web_config_file,
            Some(PathBuf::from("/etc/reapwatch/web.yml"))
        );
        assert_eq!(s.health_listen, Some("0.0.0.0:9751".parse().unwrap()));
        let s = Settings::resolve(&serve_args(&["--web.config.file", "w.yml"])).unwrap();
        assert_eq!(s.web_config_file, Some(PathBuf::from("w.yml")));
        assert_eq!(s.health_listen, None);
    }

    #[test]
    fn liveness_timeout_outlasts_the_stale_window() {
        let s = Settings::resolve(&serve_args(&[])).unwrap();
        assert_eq!(s.liveness_timeout, Duration::from_secs(300));
        let s = Settings::resolve(&serve_args(&["--liveness-timeout", "16s"])).unwrap();
        assert_eq!(s.liveness_timeout, Duration::from_secs(16));
        let err = Settings::resolve(&serve_args(&["--liveness-timeout", "15s"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--liveness-timeout (15s) must be longer than three --sample-interval (5s)"
        );
    }

    #[test]
    fn bad_settings_are_one_line_errors() {
        for argv in [
            vec!["--label-allow-list", "pid"],
            vec!["--eta-window", "soon"],
            vec!["--sample-interval", "0s"],
            vec!["--liveness-timeout", "0s"],
            vec!["--liveness-timeout", "10s", "--sample-interval", "5s"],
            // Three of these overflow a Duration: saturated, not a panic.
            vec!["--sample-interval", "6148914691236517206s"],
            vec!["--log-level", "loud"],
            vec!["--config", "/nonexistent/reapwatch.toml"],
        ] {
            let err = Settings::resolve(&serve_args(&argv)).unwrap_err();
            let text = format!("{err:#}");
            assert!(!text.contains('\n'), "{argv:?}: {text}");
        }
        let path = std::env::temp_dir().join(format!("reapwatch-bad-{}.toml", std::process::id()));
        std::fs::write(&path, "listen = 9750\nsurprise = 1\n").unwrap();
        let err =
            Settings::resolve(&serve_args(&["--config", path.to_str().unwrap()])).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(format!("{err:#}").starts_with("invalid config"), "{err:#}");
    }

    #[test]
    fn config_errors_say_the_line_and_the_key() {
        let error = |text: &str| parse_file(text).unwrap_err();
        assert_eq!(
            error("listen = \":1\"\n\neta-window = 15.0.0\n"),
            "line 3, key eta-window: invalid float, expected nothing"
        );
        assert_eq!(
            error("top-parents = 5\nlisten = 9750\n"),
            "line 2, key listen: invalid type: integer `9750`, expected a string"
        );
        assert!(error("\"\\u001b[2J\" = 1").starts_with("line 1: unknown field `\\x1b[2J`"));
        assert_eq!(
            format!(
                "{:#}",
                Settings::merge(
                    &serve_args(&["--eta-window", "0s"]),
                    FileSettings::default()
                )
                .unwrap_err()
            ),
            "--eta-window: invalid duration \"0s\": must be more than zero"
        );
    }
}

/// Random and hostile config files: never a panic, and every error is one line.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::{tests::serve_args, *};

    /// A TOML literal string: anything but its quote and control characters.
    fn literal() -> impl Strategy<Value = String> {
        prop_oneof![
            "[^'\\x00-\\x1f\\x7f]{0,24}",
            (
                any::<u64>(),
                prop::sample::select(vec!["ns", "ms", "s", "m", "h", "d", "y"])
            )
                .prop_map(|(n, unit)| format!("{n}{unit}")),
        ]
        .prop_map(|text| format!("'{text}'"))
    }

    /// A config file with every key. Keys the TOML parser types (address, hierarchy, sizes)
    /// are mostly valid so that the file reaches the checks after parsing; the strings those
    /// checks parse (durations, level, labels, directory) are hostile or plausible.
    fn config() -> impl Strategy<Value = String> {
        let typed = (
            prop_oneof![3 => Just("'127.0.0.1:9750'".to_owned()), 1 => literal()],
            prop_oneof![3 => Just("'pids'".to_owned()), 1 => literal()],
            prop::collection::vec(prop_oneof![3 => 0..=u32::MAX as i64, 1 => any::<i64>()], 4),
        );
        let checked = (
            prop::collection::vec(literal(), 6),
            prop::collection::vec(
                prop_oneof![
                    Just("'pod'".to_owned()),
                    Just("'cgroup'".to_owned()),
                    literal()
                ],
                0..4,
            ),
        );
        (typed, checked).prop_map(|((listen, hierarchy, numbers), (strings, labels))| {
            let mut text = format!("listen = {listen}\ncgroup-hierarchy = {hierarchy}\n");
            for (key, value) in [
                "gc-grace",
                "eta-window",
                "sample-interval",
                "reconcile-interval",
                "pod-logs-dir",
                "log-level",
            ]
            .iter()
            .zip(strings)
            {
                text += &format!("{key} = {value}\n");
            }
            text += &format!("label-allow-list = [{}]\n", labels.join(", "));
            for (key, n) in ["top-parents", "max-zombies", "max-cgroups", "max-waits"]
                .iter()
                .zip(numbers)
            {
                text += &format!("{key} = {n}\n");
            }
            text
        })
    }

    fn check(text: &str) -> std::result::Result<(), TestCaseError> {
        let resolved = parse_file(text)
            .map_err(anyhow::Error::msg)
            .and_then(|file| Settings::merge(&serve_args(&[]), file));
        if let Err(err) = resolved {
            let line = format!("{err:#}");
            prop_assert!(!line.contains('\n'), "{:?}", line);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn any_text_never_panics(text in any::<String>()) {
            check(&text)?;
        }

        /// Valid keys are taken as written, whatever their order and spacing.
        #[test]
        fn valid_keys_are_taken(
            seconds in 1..1_000_000u64,
            top in 0..100_000usize,
            port in 1..=u16::MAX,
            space in " {0,3}",
            reversed in any::<bool>(),
        ) {
            let mut lines = [
                format!("eta-window{space}={space}'{seconds}s'"),
                format!("top-parents{space}={space}{top}"),
                format!("health-listen{space}={space}\":{port}\""),
            ];
            if reversed {
                lines.reverse();
            }
            let file = parse_file(&lines.join("\n")).map_err(TestCaseError::fail)?;
            let settings = Settings::merge(&serve_args(&[]), file)
                .map_err(|err| TestCaseError::fail(format!("{err:#}")))?;
            prop_assert_eq!(settings.eta_window, Duration::from_secs(seconds));
            prop_assert_eq!(settings.top_parents, top);
            prop_assert_eq!(settings.health_listen, Some(SocketAddr::from(([0, 0, 0, 0], port))));
        }

        #[test]
        fn hostile_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            check(&String::from_utf8_lossy(&bytes))?;
        }

        #[test]
        fn hostile_values_never_panic(text in config()) {
            check(&text)?;
        }
    }
}
