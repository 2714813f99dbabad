//! The kubelet's PID eviction, as the kubelet itself decides it: its `pid.available`
//! thresholds from where it takes them (its command line, `--config`, the `--config-dir`
//! drop-ins; flags over drop-ins over the file), and what it will rank pods by.
//!
//! `pid.available` is min(`pid_max`, `threads-max`) minus the task total of `/proc/loadavg`,
//! zombies included: the kubelet feels a leak. It sets no `pid.available` threshold by default,
//! and ranks pods for PID eviction by priority, then by their live processes from
//! `cgroup.procs`, which never lists a zombie.

use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;
use yaml_rust2::{Yaml, YamlLoader};

use crate::{cgroup::CgroupHierarchy, escape, kubernetes, procfs};

/// The eviction signal reapwatch reads.
const SIGNAL: &str = "pid.available";
/// A configuration file larger than this is not the kubelet's.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A `pid.available` threshold, as the kubelet's configuration states it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    Pids(u64),
    /// Of the node's capacity, min(`pid_max`, `threads-max`).
    Percent(f64),
}

impl Threshold {
    /// In PIDs, on a node whose capacity is `capacity`.
    pub fn pids(self, capacity: u64) -> u64 {
        match self {
            Self::Pids(pids) => pids,
            Self::Percent(percent) => (capacity as f64 * percent / 100.0).round() as u64,
        }
    }

    fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Some(percent) = text.strip_suffix('%') {
            let percent: f64 = percent.trim().parse().ok()?;
            return (0.0..=100.0)
                .contains(&percent)
                .then_some(Self::Percent(percent));
        }
        parse_quantity(text).map(Self::Pids)
    }
}

/// A Kubernetes quantity of things: an integer with an optional SI (k, M, G) or binary (Ki,
/// Mi, Gi) suffix.
fn parse_quantity(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let factor: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(factor)
}

/// The kubelet's PID eviction settings, where it has any.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PidEviction {
    pub hard: Option<Threshold>,
    pub soft: Option<Threshold>,
    pub soft_grace: Option<Duration>,
    /// `podPidsLimit` / `--pod-max-pids` (-1: none). The pod cgroup's `pids.max` is what it
    /// set; this is what the kubelet asks of new pods.
    pub pod_pids_limit: Option<i64>,
}

impl PidEviction {
    /// The threshold the kubelet crosses first as `pid.available` falls (in PIDs): it reports
    /// PIDPressure from then on (after the soft grace period, it evicts).
    pub fn first_threshold(&self, capacity: u64) -> Option<u64> {
        [self.hard, self.soft]
            .into_iter()
            .flatten()
            .map(|t| t.pids(capacity))
            .max()
    }
}

/// What reapwatch could learn of the kubelet.
#[derive(Clone, Debug, PartialEq)]
pub enum KubeletView {
    /// No kubelet process on this node (or none outside a container).
    NotFound,
    /// Its configuration was read whole: thresholds it lacks are not set.
    Known { pid: u32, eviction: PidEviction },
    /// Found, but a file it reads could not be read or understood: thresholds unknown.
    Unknown { pid: u32 },
}

/// The kubelet's view of the node, as `scan --json` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct KubeletReport {
    /// A kubelet process was found.
    pub found: bool,
    /// Its eviction settings were read whole: a null threshold is then not set.
    pub known: bool,
    /// min(pid_max, threads-max) less every task, zombies included.
    pub pid_available: u64,
    /// `pid.available` thresholds in PIDs; null when not set or not known.
    pub hard_threshold: Option<u64>,
    pub soft_threshold: Option<u64>,
}

impl KubeletView {
    pub fn report(&self, node: &procfs::NodeLimits) -> KubeletReport {
        let capacity = node.limit();
        let eviction = match self {
            Self::Known { eviction, .. } => Some(eviction),
            _ => None,
        };
        let threshold = |pick: fn(&PidEviction) -> Option<Threshold>| {
            eviction.and_then(pick).map(|t| t.pids(capacity))
        };
        KubeletReport {
            found: *self != Self::NotFound,
            known: eviction.is_some(),
            pid_available: capacity.saturating_sub(node.tasks),
            hard_threshold: threshold(|e| e.hard),
            soft_threshold: threshold(|e| e.soft),
        }
    }
}

/// The view and what stood in its way, each a line for the log.
pub struct Discovery {
    pub view: KubeletView,
    pub warnings: Vec<String>,
}

/// The kubelet's eviction settings from the process found in `proc_root`, its files read
/// below `fs_root` (`/`: the chart mounts them at their host paths).
pub fn discover(proc_root: &Path, fs_root: &Path) -> Discovery {
    let Some((pid, args)) = find_kubelet(proc_root) else {
        return Discovery {
            view: KubeletView::NotFound,
            warnings: Vec::new(),
        };
    };
    let mut warnings = Vec::new();
    let view = match read_eviction(&args, fs_root, &mut warnings) {
        Some(eviction) => KubeletView::Known { pid, eviction },
        None => KubeletView::Unknown { pid },
    };
    Discovery { view, warnings }
}

/// The kubelet's view kept fresh, each new reason it is unknown said once in the log.
pub struct KubeletWatch {
    view: KubeletView,
    said: HashSet<String>,
}

impl Default for KubeletWatch {
    fn default() -> Self {
        Self {
            view: KubeletView::NotFound,
            said: HashSet::new(),
        }
    }
}

impl KubeletWatch {
    pub fn refresh(&mut self, proc_root: &Path, fs_root: &Path) {
        let discovery = discover(proc_root, fs_root);
        let mut lines = discovery.warnings;
        if discovery.view == KubeletView::NotFound {
            lines.push(
                "no kubelet process on this node: the kubelet's PID pressure is not forecast"
                    .to_owned(),
            );
        }
        for line in lines {
            if self.said.insert(line.clone()) {
                log::warn!("{line}");
            }
        }
        self.view = discovery.view;
    }

    pub fn view(&self) -> &KubeletView {
        &self.view
    }
}

/// The kubelet: a process named `kubelet` in the host's PID namespace and outside every
/// container's cgroup (a tenant can name a process `kubelet`, not move it out of its pod).
fn find_kubelet(proc_root: &Path) -> Option<(u32, Vec<String>)> {
    for pid in procfs::list_pids(proc_root).ok()? {
        let dir = proc_root.join(pid.to_string());
        let Ok(comm) = fs::read(dir.join("comm")) else {
            continue;
        };
        if comm.strip_suffix(b"\n").unwrap_or(&comm) != b"kubelet" {
            continue;
        }
        let host_namespace = fs::read_to_string(dir.join("status")).is_ok_and(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .is_some_and(|ids| ids.split_whitespace().count() == 1)
        });
        let in_a_pod = fs::read_to_string(dir.join("cgroup"))
            .map_or(true, |cgroups| cgroups.contains("kubepods"));
        if !host_namespace || in_a_pod {
            continue;
        }
        let Ok(cmdline) = fs::read(dir.join("cmdline")) else {
            continue;
        };
        let args = cmdline
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        return Some((pid, args));
    }
    None
}

/// The value of `--name=value` or `--name value`; the last one wins, as with the kubelet.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let mut found = None;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let Some(rest) = word.strip_prefix("--").and_then(|w| w.strip_prefix(name)) else {
            continue;
        };
        if let Some(value) = rest.strip_prefix('=') {
            found = Some(value);
        } else if rest.is_empty() {
            found = words.next().map(String::as_str);
        }
    }
    found
}

/// Flags over drop-ins over the config file; None when a file it names cannot be read or a
/// setting reapwatch needs cannot be understood (said in `warnings`).
fn read_eviction(
    args: &[String],
    fs_root: &Path,
    warnings: &mut Vec<String>,
) -> Option<PidEviction> {
    let mut eviction = PidEviction::default();
    let mut complete = true;
    let mut files = Vec::new();
    if let Some(config) = flag(args, "config") {
        files.push(PathBuf::from(config));
    }
    if let Some(dir) = flag(args, "config-dir") {
        match drop_ins(&host_path(fs_root, dir)) {
            Ok(found) => files.extend(found.into_iter().map(|f| Path::new(dir).join(f))),
            Err(err) => {
                warnings.push(format!(
                    "kubelet drop-in directory {}: {err}: its PID eviction thresholds are unknown",
                    escape::for_terminal(dir.as_bytes())
                ));
                complete = false;
            }
        }
    }
    for file in &files {
        if let Err(warning) = merge_file(&mut eviction, fs_root, file) {
            warnings.push(warning);
            complete = false;
        }
    }
    if let Err(warning) = merge_flags(&mut eviction, args) {
        warnings.push(warning);
        complete = false;
    }
    complete.then_some(eviction)
}

/// A host path as this process sees it.
fn host_path(fs_root: &Path, path: &str) -> PathBuf {
    fs_root.join(path.trim_start_matches('/'))
}

/// The drop-ins the kubelet reads: `*.conf`, in lexical order.
fn drop_ins(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".conf"))
        .collect();
    names.sort();
    Ok(names)
}

/// Merges one KubelConfiguration file (YAML or JSON) into `eviction`; unknown fields are
/// ignored, as the kubelet ignores them in drop-ins.
fn merge_file(eviction: &mut PidEviction, fs_root: &Path, file: &Path) -> Result<(), String> {
    let shown = escape::for_terminal(file.as_os_str().as_encoded_bytes());
    let path = host_path(fs_root, &file.to_string_lossy());
    let text = match fs::metadata(&path) {
        Ok(meta) if !meta.is_file() || meta.len() > MAX_CONFIG_BYTES => {
            return Err(format!(
                "kubelet config {shown}: not a configuration file: PID eviction thresholds unknown"
            ))
        }
        Ok(_) => fs::read_to_string(&path).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
    .map_err(|err| {
        format!(
            "kubelet config {shown}: {err} (mount it read-only at its host path: the chart's \
             kubelet.configPaths): PID eviction thresholds unknown"
        )
    })?;
    let docs = YamlLoader::load_from_str(&text)
        .map_err(|err| format!("kubelet config {shown}: not YAML or JSON: {err}"))?;
    let Some(config) = docs.first() else {
        return Ok(());
    };
    let malformed = |key: &str| format!("kubelet config {shown}: {key} is malformed");
    for (key, slot) in [
        ("evictionHard", &mut eviction.hard),
        ("evictionSoft", &mut eviction.soft),
    ] {
        match &config[key] {
            Yaml::BadValue => {}
            Yaml::Hash(map) => {
                if let Some(value) = map.get(&Yaml::String(SIGNAL.into())) {
                    let text = value
                        .as_str()
                        .ok_or_else(|| malformed(&format!("{key}.{SIGNAL}")))?;
                    *slot = Some(
                        Threshold::parse(text)
                            .ok_or_else(|| malformed(&format!("{key}.{SIGNAL}")))?,
                    );
                }
            }
            _ => return Err(malformed(key)),
        }
    }
    match &config["evictionSoftGracePeriod"] {
        Yaml::BadValue => {}
        Yaml::Hash(map) => {
            if let Some(value) = map.get(&Yaml::String(SIGNAL.into())) {
                let key = format!("evictionSoftGracePeriod.{SIGNAL}");
                let text = value.as_str().ok_or_else(|| malformed(&key))?;
                eviction.soft_grace = Some(go_duration(text).ok_or_else(|| malformed(&key))?);
            }
        }
        _ => return Err(malformed("evictionSoftGracePeriod")),
    }
    match &config["podPidsLimit"] {
        Yaml::BadValue => {}
        Yaml::Integer(limit) => eviction.pod_pids_limit = Some(*limit),
        _ => return Err(malformed("podPidsLimit")),
    }
    Ok(())
}

/// `--eviction-hard` and `--eviction-soft` replace the file's whole map, as the kubelet's
/// flags do; `--eviction-soft-grace-period` and `--pod-max-pids` one value each.
fn merge_flags(eviction: &mut PidEviction, args: &[String]) -> Result<(), String> {
    let malformed =
        |name: &str| format!("kubelet flag --{name} is malformed: PID eviction thresholds unknown");
    for (name, slot, separator) in [
        ("eviction-hard", &mut eviction.hard, '<'),
        ("eviction-soft", &mut eviction.soft, '<'),
    ] {
        let Some(value) = flag(args, name) else {
            continue;
        };
        *slot = None;
        for pair in value.split(',').filter(|p| !p.trim().is_empty()) {
            let (signal, threshold) = pair.split_once(separator).ok_or_else(|| malformed(name))?;
            if signal.trim() == SIGNAL {
                *slot = Some(Threshold::parse(threshold).ok_or_else(|| malformed(name))?);
            }
        }
    }
    let name = "eviction-soft-grace-period";
    if let Some(value) = flag(args, name) {
        eviction.soft_grace = None;
        for pair in value.split(',') {
            let (signal, grace) = pair.split_once('=').ok_or_else(|| malformed(name))?;
            if signal.trim() == SIGNAL {
                eviction.soft_grace = Some(go_duration(grace).ok_or_else(|| malformed(name))?);
            }
        }
    }
    if let Some(value) = flag(args, "pod-max-pids") {
        eviction.pod_pids_limit = Some(value.parse().map_err(|_| malformed("pod-max-pids"))?);
    }
    Ok(())
}

/// A Go duration as the kubelet writes them: `90s`, `1m30s`, `1h`.
fn go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    humantime::parse_duration(text).ok()
}

/// What the kubelet's PID eviction makes of one pod: it ranks pods by priority, then by live
/// processes (`cgroup.procs`), which leave out its zombies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodRanking {
    /// The pod's cgroup (its containers' parent).
    pub pod_cgroup: String,
    /// What the kubelet ranks it by: processes in `cgroup.procs` of the pod's cgroups.
    pub live_processes: u64,
    /// What it really holds: the pod cgroup's `pids.current`, every task and zombie; null
    /// without the pids controller.
    pub pids_held: Option<u64>,
    /// Unreaped zombies whose parent is in the pod.
    pub zombies: u64,
    /// The pod cgroup's `pids.max` (`podPidsLimit`); null when unset (`max`) or unknown.
    pub pod_pids_limit: Option<u64>,
}

impl PodRanking {
    /// The ranking of the pod `container_cgroup` belongs to, which holds `zombies`; None
    /// outside a pod.
    pub fn of(hierarchy: &CgroupHierarchy, container_cgroup: &str, zombies: u64) -> Option<Self> {
        let pod = kubernetes::pod_cgroup(container_cgroup)?;
        let pids = hierarchy.pids(pod);
        Some(Self {
            pod_cgroup: pod.to_owned(),
            live_processes: hierarchy.processes_below(pod),
            pids_held: pids.map(|(current, _)| current),
            zombies,
            pod_pids_limit: pids.and_then(|(_, max)| max),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    struct Root(PathBuf);

    impl Root {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("reapwatch-kubelet-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, path: &str, text: &str) {
            let path = host_path(&self.0, path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }

        fn read(&self, words: &[&str]) -> (Option<PidEviction>, Vec<String>) {
            let mut warnings = Vec::new();
            let eviction = read_eviction(&args(words), &self.0, &mut warnings);
            (eviction, warnings)
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const KUBEADM: &str = "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
someFutureField: {nested: [1, 2]}
evictionHard:
  memory.available: 100Mi
  pid.available: \"10%\"
evictionSoft:
  pid.available: \"2000\"
evictionSoftGracePeriod:
  pid.available: 1m30s
podPidsLimit: 4096
";

    #[test]
    fn kubeadm_yaml_with_thresholds() {
        let root = Root::new("kubeadm");
        root.write("/var/lib/kubelet/config.yaml", KUBEADM);
        let (eviction, warnings) =
            root.read(&["/usr/bin/kubelet", "--config=/var/lib/kubelet/config.yaml"]);
        assert_eq!(warnings, Vec::<String>::new());
        let eviction = eviction.unwrap();
        assert_eq!(eviction.hard, Some(Threshold::Percent(10.0)));
        assert_eq!(eviction.soft, Some(Threshold::Pids(2000)));
        assert_eq!(eviction.soft_grace, Some(Duration::from_secs(90)));
        assert_eq!(eviction.pod_pids_limit, Some(4096));
        // 10% of 32768 is 3277, above the soft 2000: PIDPressure starts there.
        assert_eq!(eviction.first_threshold(32768), Some(3277));
    }

    #[test]
    fn eks_json_without_a_threshold_is_known_to_have_none() {
        let root = Root::new("eks");
        root.write(
            "/etc/kubernetes/kubelet/kubelet-config.json",
            r#"{"kind":"KubeletConfiguration","apiVersion":"kubelet.config.k8s.io/v1beta1",
                "evictionHard":{"memory.available":"100Mi","nodefs.available":"10%"},
                "maxPods":110}"#,
        );
        let (eviction, warnings) = root.read(&[
            "/usr/bin/kubelet",
            "--config",
            "/etc/kubernetes/kubelet/kubelet-config.json",
        ]);
        assert!(warnings.is_empty(), "{warnings:?}");
        let eviction = eviction.unwrap();
        assert_eq!(eviction, PidEviction::default());
        assert_eq!(eviction.first_threshold(32768), None);
    }

    #[test]
    fn a_drop_in_overrides_the_file_and_a_flag_overrides_both() {
        let root = Root::new("dropin");
        root.write(
            "/etc/kubernetes/kubelet/config.json",
            r#"{"evictionHard":{"pid.available":"5%"}}"#,
        );
        root.write(
            "/etc/kubernetes/kubelet/config.json.d/10-eviction.conf",
            r#"{"evictionHard":{"pid.available":"1000"},"evictionSoft":{"pid.available":"20%"}}"#,
        );
        // Not a drop-in: only *.conf files are read.
        root.write(
            "/etc/kubernetes/kubelet/config.json.d/99-ignored.yaml",
            "evictionHard: {pid.available: '99%'}",
        );
        let base = [
            "kubelet",
            "--config=/etc/kubernetes/kubelet/config.json",
            "--config-dir=/etc/kubernetes/kubelet/config.json.d",
        ];
        let (eviction, warnings) = root.read(&base);
        assert!(warnings.is_empty(), "{warnings:?}");
        let eviction = eviction.unwrap();
        assert_eq!(eviction.hard, Some(Threshold::Pids(1000)));
        assert_eq!(eviction.soft, Some(Threshold::Percent(20.0)));

        let mut with_flag = base.to_vec();
        with_flag.extend([
            "--eviction-hard=memory.available<100Mi,pid.available<3k",
            "--pod-max-pids=512",
        ]);
        let (eviction, _) = root.read(&with_flag);
        let eviction = eviction.unwrap();
        assert_eq!(eviction.hard, Some(Threshold::Pids(3000)));
        assert_eq!(eviction.soft, Some(Threshold::Percent(20.0)));
        assert_eq!(eviction.pod_pids_limit, Some(512));

        // A flag without pid.available replaces the map: no hard threshold any more.
        let mut without = base.to_vec();
        without.push("--eviction-hard=memory.available<100Mi");
        assert_eq!(root.read(&without).0.unwrap().hard, None);
    }

    #[test]
    fn a_missing_file_is_unknown_and_said_once() {
        let root = Root::new("missing");
        let (eviction, warnings) =
            root.read(&["kubelet", "--config=/home/kubernetes/kubelet-config.yaml"]);
        assert_eq!(eviction, None);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("/home/kubernetes/kubelet-config.yaml"),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[0].contains("kubelet.configPaths"),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn a_malformed_file_names_its_key() {
        let root = Root::new("malformed");
        for (text, key) in [
            (
                "evictionHard: {pid.available: ten percent}",
                "evictionHard.pid.available",
            ),
            ("evictionHard: [pid.available]", "evictionHard"),
            (
                "evictionSoftGracePeriod: {pid.available: soon}",
                "evictionSoftGracePeriod.pid.available",
            ),
            ("podPidsLimit: lots", "podPidsLimit"),
            (
                "evictionSoft: {pid.available: '150%'}",
                "evictionSoft.pid.available",
            ),
        ] {
            root.write("/c.yaml", text);
            let (eviction, warnings) = root.read(&["kubelet", "--config=/c.yaml"]);
            assert_eq!(eviction, None, "{text}");
            assert_eq!(warnings.len(), 1);
            assert!(
                warnings[0].contains("/c.yaml")
                    && warnings[0].contains(&format!("{key} is malformed")),
                "{text}: {}",
                warnings[0]
            );
        }
        root.write("/c.yaml", "evictionHard: {pid.available: [}");
        let (eviction, warnings) = root.read(&["kubelet", "--config=/c.yaml"]);
        assert_eq!(eviction, None);
        assert!(warnings[0].contains("not YAML or JSON"), "{}", warnings[0]);
        let (eviction, warnings) = root.read(&["kubelet", "--eviction-hard=pid.available>5"]);
        assert_eq!(eviction, None);
        assert!(
            warnings[0].contains("--eviction-hard is malformed"),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn flags_alone_and_no_flags() {
        let root = Root::new("flags");
        let (eviction, warnings) = root.read(&[
            "kubelet",
            "--eviction-soft=pid.available<15%",
            "--eviction-soft-grace-period=memory.available=1m,pid.available=2m",
        ]);
        assert!(warnings.is_empty());
        let eviction = eviction.unwrap();
        assert_eq!(eviction.soft, Some(Threshold::Percent(15.0)));
        assert_eq!(eviction.soft_grace, Some(Duration::from_secs(120)));
        assert_eq!(root.read(&["kubelet"]).0, Some(PidEviction::default()));
    }

    #[test]
    fn quantities_and_percentages() {
        assert_eq!(Threshold::parse("1000"), Some(Threshold::Pids(1000)));
        assert_eq!(Threshold::parse("2Ki"), Some(Threshold::Pids(2048)));
        assert_eq!(Threshold::parse("1.5k"), None);
        assert_eq!(Threshold::parse("12.5%"), Some(Threshold::Percent(12.5)));
        assert_eq!(Threshold::parse("-1%"), None);
        assert_eq!(Threshold::Percent(10.0).pids(4_194_304), 419_430);
    }

    #[test]
    fn the_last_flag_wins() {
        let words = args(&["k", "--config=/a", "--config", "/b", "--configure=x"]);
        assert_eq!(flag(&words, "config"), Some("/b"));
        assert_eq!(flag(&words, "config-dir"), None);
    }
}
