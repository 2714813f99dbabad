//! Attribution: which cgroup a process belongs to, as a path the host shows.

use std::{
    collections::HashMap,
    ffi::OsStr,
    fs,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{escape, procfs::CgroupLine};

/// Picks the line of `/proc/<pid>/cgroup` that best names the process's container or unit:
/// a path that looks like a container first, then a non-root unified (v2) path, then the v1
/// `pids` or `name=systemd` path, then whatever is left.
pub fn select_path(lines: &[CgroupLine]) -> Option<&[u8]> {
    let pick = |wanted: &dyn Fn(&CgroupLine) -> bool| {
        lines.iter().find(|l| wanted(l)).map(|l| l.path.as_slice())
    };
    pick(&|l| looks_like_container(&l.path))
        .or_else(|| pick(&|l| l.is_unified() && l.path != b"/"))
        .or_else(|| pick(&|l| l.has_controller("pids")))
        .or_else(|| pick(&|l| l.has_controller("name=systemd")))
        .or_else(|| lines.first().map(|l| l.path.as_slice()))
}

/// [`select_path`], as a host path where this process is in a private cgroup namespace,
/// decoded lossily: for display and labels.
pub fn select_host_path(
    hierarchy: Option<&mut CgroupHierarchy>,
    lines: &[CgroupLine],
) -> Option<String> {
    let path = select_path(lines)?;
    Some(match hierarchy {
        Some(hierarchy) => escape::lossy(&hierarchy.host_path(path)),
        None => escape::lossy(path),
    })
}

/// Container runtimes name their cgroups after a 64-hex container id (Docker, containerd,
/// CRI-O, podman), and kubelet puts pods under `kubepods`.
pub fn looks_like_container(path: &[u8]) -> bool {
    path.split(|&b| b == b'/').any(|segment| {
        segment.starts_with(b"kubepods")
            || segment
                .split(|&b| b == b'-' || b == b'.')
                .any(|part| part.len() == 64 && part.iter().all(u8::is_ascii_hexdigit))
    })
}

/// Which cgroup hierarchy the kernel programs charge counters to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HierarchyKind {
    /// The unified (v2) hierarchy: hosts that run their services and containers on cgroup v2.
    Unified,
    /// The v1 `pids` hierarchy: cgroup v1 and hybrid hosts, where every process's unified
    /// cgroup is the root. Container runtimes and kubelet always place tasks there.
    V1Pids,
}

/// Which hierarchy to count by, as an operator chooses it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HierarchyChoice {
    /// Unified on pure cgroup v2 hosts, else v1 `pids` if mounted, else the hybrid unified.
    #[default]
    Auto,
    Unified,
    Pids,
}

/// The hierarchy counters are keyed by, for cgroup id <-> path.
pub struct CgroupHierarchy {
    kind: HierarchyKind,
    root: PathBuf,
    /// Raw paths (`/a/b`) from the last walk.
    paths_by_id: HashMap<u64, Vec<u8>>,
    /// The raw path of each walked path that is not UTF-8, by its lossy text: callers that
    /// hold only the text (a label) still reach the directory.
    raw_by_text: HashMap<String, Vec<u8>>,
    walked_at: Option<Instant>,
    /// Where this process's cgroup namespace is rooted, once looked up.
    namespace_root: Option<Option<Vec<u8>>>,
}

const WALK_AT_MOST_EVERY: Duration = Duration::from_secs(1);

impl CgroupHierarchy {
    /// Pure v2 host: `/sys/fs/cgroup`. Otherwise the v1 `pids` hierarchy if mounted, else a
    /// hybrid host's unified mount. None without any cgroupfs.
    pub fn discover(sys_fs_cgroup: &Path) -> Option<Self> {
        Self::choose(sys_fs_cgroup, HierarchyChoice::Auto)
            .ok()
            .flatten()
    }

    /// The hierarchy `choice` names; an error if it is not mounted.
    pub fn choose(sys_fs_cgroup: &Path, choice: HierarchyChoice) -> anyhow::Result<Option<Self>> {
        let unified = [sys_fs_cgroup.to_path_buf(), sys_fs_cgroup.join("unified")]
            .into_iter()
            .find(|dir| dir.join("cgroup.controllers").exists());
        let pids = sys_fs_cgroup.join("pids");
        let pids = pids.join("tasks").exists().then_some(pids);
        let (kind, root) = match (choice, unified, pids) {
            (HierarchyChoice::Auto, Some(root), _) if root == sys_fs_cgroup => {
                (HierarchyKind::Unified, root)
            }
            (HierarchyChoice::Auto | HierarchyChoice::Pids, _, Some(pids)) => {
                (HierarchyKind::V1Pids, pids)
            }
            (HierarchyChoice::Auto | HierarchyChoice::Unified, Some(root), _) => {
                (HierarchyKind::Unified, root)
            }
            (HierarchyChoice::Auto, None, None) => return Ok(None),
            (choice, _, _) => anyhow::bail!(
                "no {choice:?} cgroup hierarchy under {}",
                sys_fs_cgroup.display()
            ),
        };
        Ok(Some(Self {
            kind,
            root,
            paths_by_id: HashMap::new(),
            raw_by_text: HashMap::new(),
            walked_at: None,
            namespace_root: None,
        }))
    }

    pub fn kind(&self) -> HierarchyKind {
        self.kind
    }

    /// Where the hierarchy is mounted.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A hierarchy mounted at `root` (tests build fake ones).
    pub fn at(root: &Path, kind: HierarchyKind) -> Self {
        Self {
            kind,
            root: root.to_path_buf(),
            paths_by_id: HashMap::new(),
            raw_by_text: HashMap::new(),
            walked_at: None,
            namespace_root: None,
        }
    }

    /// The host path of a path read from `/proc/<pid>/cgroup`. Those are relative to the
    /// reader's cgroup namespace: in a pod with a private one (the default on cgroup v2) they
    /// read `/../../kubepods.slice/...`. The host's hierarchy mounted here says where that
    /// namespace is rooted: the directory listing this process.
    pub fn host_path(&mut self, proc_path: &[u8]) -> Vec<u8> {
        if !proc_path.starts_with(b"/..") {
            return proc_path.to_vec();
        }
        if self.namespace_root.is_none() {
            let own = std::process::id().to_string();
            let found = self.walk().into_iter().map(|(_, path)| path).find(|path| {
                fs::read_to_string(self.dir(path).join("cgroup.procs"))
                    .is_ok_and(|procs| procs.lines().any(|p| p == own))
            });
            self.namespace_root = Some(found);
        }
        let root = self.namespace_root.clone().flatten().unwrap_or_default();
        let mut parts: Vec<&[u8]> = Vec::new();
        for part in root
            .split(|&b| b == b'/')
            .chain(proc_path.split(|&b| b == b'/'))
            .filter(|p| !p.is_empty())
        {
            if part == b".." {
                parts.pop();
            } else {
                parts.push(part);
            }
        }
        [b"/".as_slice(), &parts.join(&b'/')].concat()
    }

    /// The directory of a path: raw bytes, or the lossy text of a walked path. (A valid
    /// name that holds U+FFFD and equals another's lossy text is taken for that other.)
    fn dir(&self, path: &[u8]) -> PathBuf {
        let raw = std::str::from_utf8(path)
            .ok()
            .and_then(|text| self.raw_by_text.get(text))
            .map_or(path, Vec::as_slice);
        let relative = &raw[raw.iter().take_while(|&&b| b == b'/').count()..];
        self.root.join(OsStr::from_bytes(relative))
    }

    /// The line of `/proc/<pid>/cgroup` that belongs to this hierarchy.
    pub fn line<'a>(&self, lines: &'a [CgroupLine]) -> Option<&'a CgroupLine> {
        lines.iter().find(|l| match self.kind {
            HierarchyKind::Unified => l.is_unified(),
            HierarchyKind::V1Pids => l.has_controller("pids"),
        })
    }

    /// The cgroup id (kernfs inode) of a path such as `/system.slice/x.service`.
    pub fn id_of(&self, path: &[u8]) -> Option<u64> {
        fs::metadata(self.dir(path)).ok().map(|m| m.ino())
    }

    /// `pids.current` and `pids.max` (None for "max") of a cgroup, where the pids controller
    /// is active for it. `path` is raw, or the text [`CgroupHierarchy::path_of`] gave.
    pub fn pids(&self, path: impl AsRef<[u8]>) -> Option<(u64, Option<u64>)> {
        let dir = self.dir(path.as_ref());
        let current = fs::read_to_string(dir.join("pids.current"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let max = fs::read_to_string(dir.join("pids.max")).ok()?;
        Some((current, max.trim().parse().ok()))
    }

    /// Processes (not threads, never zombies) in the cgroup and every cgroup below it: what
    /// `cgroup.procs` lists, as the kubelet counts a pod's processes.
    pub fn processes_below(&self, path: impl AsRef<[u8]>) -> u64 {
        subtree(self.dir(path.as_ref()))
            .iter()
            .filter_map(|dir| fs::read(dir.join("cgroup.procs")).ok())
            .map(|procs| {
                procs
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .count() as u64
            })
            .sum()
    }

    /// [`binding_limit`] of the cgroup at `path` (the text [`CgroupHierarchy::path_of`] gave),
    /// read from this hierarchy.
    pub fn binding_limit(&self, path: &str) -> Option<BindingLimit> {
        binding_limit(path, |cgroup| self.pids(cgroup))
    }

    /// Forks refused that the kernel counts in this cgroup's own, local count: summed over a
    /// subtree, each refusal counts once, whatever the kernel. Where it differs:
    /// - v1, and v2 before 6.14: `pids.events`, forks refused to this cgroup's processes,
    ///   whichever limit (its own or an ancestor's) refused them;
    /// - v2 from 6.14: `pids.events` counts at the limiting cgroup and every ancestor; the
    ///   local count is `pids.events.local`, forks refused by this cgroup's own limit (with
    ///   the `pids_localevents` mount option, forks refused inside it, as v1).
    ///
    /// None where neither file is there.
    pub fn fork_failures(&self, path: impl AsRef<[u8]>) -> Option<u64> {
        let dir = self.dir(path.as_ref());
        let events = fs::read(dir.join("pids.events.local"))
            .or_else(|_| fs::read(dir.join("pids.events")))
            .ok()?;
        parse_pids_events_max(&events)
    }

    /// The path of a cgroup id (lossy text), walking the hierarchy on a cache miss. Ids of
    /// removed cgroups stay unresolved.
    pub fn path_of(&mut self, id: u64) -> Option<String> {
        // A cached path holds while that directory still has this id.
        if let Some(path) = self.paths_by_id.get(&id) {
            if self.id_of(path) == Some(id) {
                return Some(escape::lossy(path));
            }
        }
        // Unknown ids (cgroups gone before they were seen) must not each cost a full walk.
        if self
            .walked_at
            .is_some_and(|at| at.elapsed() < WALK_AT_MOST_EVERY)
        {
            return None;
        }
        self.walked_at = Some(Instant::now());
        self.paths_by_id = self.walk().into_iter().collect();
        self.raw_by_text = self
            .paths_by_id
            .values()
            .filter(|path| std::str::from_utf8(path).is_err())
            .map(|path| (escape::lossy(path), path.clone()))
            .collect();
        self.paths_by_id.get(&id).map(|path| escape::lossy(path))
    }

    /// Every cgroup of the hierarchy: `(id, raw path)`.
    pub fn walk(&self) -> Vec<(u64, Vec<u8>)> {
        subtree(self.root.clone())
            .into_iter()
            .filter_map(|dir| {
                let meta = fs::metadata(&dir).ok()?;
                let relative = dir.strip_prefix(&self.root).unwrap_or(Path::new(""));
                Some((meta.ino(), [b"/", relative.as_os_str().as_bytes()].concat()))
            })
            .collect()
    }
}

/// `top` and every directory below it, depth first (a directory that cannot be listed is
/// there, without what is below it).
fn subtree(top: PathBuf) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![top];
    while let Some(dir) = stack.pop() {
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        found.push(dir);
    }
    found
}

/// The limit that stops the forks of the cgroup at `path` first: among its own `pids.max` and
/// its ancestors' (a pod's `podPidsLimit`, `kubepods`' reserve, a slice's `TasksMax`), the
/// one with the least headroom, `pids.max - pids.current` of the cgroup that sets it.
/// `usage` gives a cgroup's `pids.current` and `pids.max` (None for `max`). None where no
/// cgroup on the way sets one, or where the cgroup itself is gone (its ancestors' limits
/// bind nothing of it).
pub fn binding_limit(
    path: &str,
    usage: impl Fn(&str) -> Option<(u64, Option<u64>)>,
) -> Option<BindingLimit> {
    let path = path.trim_end_matches('/');
    usage(path)?;
    let lineage = std::iter::successors(Some(path), |p| p.rsplit_once('/').map(|(up, _)| up));
    lineage
        .filter(|cgroup| !cgroup.is_empty())
        .filter_map(|cgroup| {
            let (current, max) = usage(cgroup)?;
            Some(BindingLimit {
                cgroup: cgroup.to_owned(),
                current,
                max: max?,
            })
        })
        .min_by_key(BindingLimit::headroom)
}

/// A `pids.max` that can stop a cgroup's forks, and the cgroup that sets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingLimit {
    /// Path of the cgroup whose `pids.max` it is (lossy text).
    pub cgroup: String,
    /// `pids.current` of that cgroup: its whole subtree's tasks, zombies included.
    pub current: u64,
    pub max: u64,
}

impl BindingLimit {
    /// Tasks that cgroup may still gain.
    pub fn headroom(&self) -> u64 {
        self.max.saturating_sub(self.current)
    }
}

/// `max 73` in `pids.events` (cgroup v1 and v2 alike; v2 may add `max.imposed`).
pub fn parse_pids_events_max(events: &[u8]) -> Option<u64> {
    String::from_utf8_lossy(events).lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == "max").then(|| value.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::parse_cgroup_file;

    const CONTAINER_ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn container_line_wins_on_hybrid_hosts() {
        let text = format!(
            "12:pids:/kubepods/burstable/pod1234/{CONTAINER_ID}\n\
             1:name=systemd:/kubepods/burstable/pod1234/{CONTAINER_ID}\n\
             0::/\n"
        );
        let lines = parse_cgroup_file(text.as_bytes()).unwrap();
        assert_eq!(
            select_path(&lines),
            Some(format!("/kubepods/burstable/pod1234/{CONTAINER_ID}").as_bytes())
        );
    }

    #[test]
    fn unified_path_before_v1_controllers() {
        let lines = parse_cgroup_file(
            b"12:pids:/user.slice\n1:name=systemd:/user.slice/session-1.scope\n0::/system.slice/cron.service\n",
        )
        .unwrap();
        assert_eq!(
            select_path(&lines),
            Some(b"/system.slice/cron.service".as_slice())
        );
    }

    #[test]
    fn v1_pids_when_unified_is_root() {
        let lines = parse_cgroup_file(
            b"1:name=systemd:/system.slice/ssh.service\n12:pids:/system.slice/ssh.service/x\n0::/\n",
        )
        .unwrap();
        assert_eq!(
            select_path(&lines),
            Some(b"/system.slice/ssh.service/x".as_slice())
        );
    }

    #[test]
    fn paths_from_a_private_cgroup_namespace() {
        let root = std::env::temp_dir().join(format!("reapwatch-cgns-{}", std::process::id()));
        let own = root.join("kubepods.slice/pod-a/ctr-reapwatch");
        fs::create_dir_all(&own).unwrap();
        fs::create_dir_all(root.join("kubepods.slice/pod-b/ctr-agent")).unwrap();
        fs::write(
            own.join("cgroup.procs"),
            format!("1\n{}\n", std::process::id()),
        )
        .unwrap();
        let mut hierarchy = CgroupHierarchy::at(&root, HierarchyKind::Unified);
        let agent = hierarchy.host_path(b"/../../pod-b/ctr-agent");
        let unchanged = hierarchy.host_path(b"/system.slice/cron.service");
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(agent, b"/kubepods.slice/pod-b/ctr-agent");
        assert_eq!(unchanged, b"/system.slice/cron.service");
    }

    #[test]
    fn non_utf8_cgroup_resolves_from_its_lossy_path() {
        let root = std::env::temp_dir().join(format!("reapwatch-bytes-{}", std::process::id()));
        let bad = root.join(OsStr::from_bytes(b"pods/bad\xffname"));
        fs::create_dir_all(&bad).unwrap();
        fs::write(bad.join("pids.current"), "3\n").unwrap();
        fs::write(bad.join("pids.max"), "max\n").unwrap();
        let id = fs::metadata(&bad).unwrap().ino();
        let mut hierarchy = CgroupHierarchy::at(&root, HierarchyKind::V1Pids);
        let text = hierarchy.path_of(id);
        let raw_id = hierarchy.id_of(b"/pods/bad\xffname");
        let pids = hierarchy.pids(text.clone().unwrap_or_default());
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(text.as_deref(), Some("/pods/bad\u{fffd}name"));
        assert_eq!(raw_id, Some(id));
        assert_eq!(pids, Some((3, None)));
    }

    #[test]
    fn the_binding_limit_has_the_least_headroom_on_the_way_up() {
        let root = std::env::temp_dir().join(format!("reapwatch-bind-{}", std::process::id()));
        let write = |dir: &str, current: u64, max: &str| {
            let dir = root.join(dir);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("pids.current"), format!("{current}\n")).unwrap();
            fs::write(dir.join("pids.max"), format!("{max}\n")).unwrap();
        };
        // kubepods reserves 1000 of which 990 used; the pod allows 50 and has 30; its
        // container sets nothing; another container sets 40 and uses 5.
        write("kubepods", 990, "1000");
        write("kubepods/pod", 30, "50");
        write("kubepods/pod/ctr", 12, "max");
        write("kubepods/pod/own", 5, "40");
        write("free", 3, "max");
        let hierarchy = CgroupHierarchy::at(&root, HierarchyKind::V1Pids);
        let kubepods = hierarchy.binding_limit("/kubepods/pod/ctr");
        fs::write(root.join("kubepods/pids.max"), "max\n").unwrap();
        let pod = hierarchy.binding_limit("/kubepods/pod/ctr");
        let pod_over_own = hierarchy.binding_limit("/kubepods/pod/own");
        let none = hierarchy.binding_limit("/free");
        let gone = hierarchy.binding_limit("/kubepods/pod/removed");
        fs::remove_dir_all(&root).unwrap();
        let limit = |cgroup: &str, current, max| BindingLimit {
            cgroup: cgroup.to_owned(),
            current,
            max,
        };
        assert_eq!(kubepods, Some(limit("/kubepods", 990, 1000)));
        assert_eq!(pod, Some(limit("/kubepods/pod", 30, 50)));
        assert_eq!(pod_over_own, Some(limit("/kubepods/pod", 30, 50)));
        assert_eq!(none, None);
        assert_eq!(gone, None);
    }

    #[test]
    fn refusals_are_read_from_the_local_count() {
        let root = std::env::temp_dir().join(format!("reapwatch-events-{}", std::process::id()));
        for (dir, events, local) in [
            ("v1", "max 3\n", None),
            ("v2-hierarchical", "max 9\n", Some("max 4\n")),
        ] {
            fs::create_dir_all(root.join(dir)).unwrap();
            fs::write(root.join(dir).join("pids.events"), events).unwrap();
            if let Some(local) = local {
                fs::write(root.join(dir).join("pids.events.local"), local).unwrap();
            }
        }
        let hierarchy = CgroupHierarchy::at(&root, HierarchyKind::Unified);
        let found = [
            hierarchy.fork_failures("/v1"),
            hierarchy.fork_failures("/v2-hierarchical"),
            hierarchy.fork_failures("/none"),
        ];
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(found, [Some(3), Some(4), None]);
    }

    #[test]
    fn pids_events() {
        assert_eq!(parse_pids_events_max(b"max 73\n"), Some(73));
        assert_eq!(parse_pids_events_max(b"max 0\nmax.imposed 5\n"), Some(0));
        assert_eq!(parse_pids_events_max(b"max.imposed 5\n"), None);
        assert_eq!(parse_pids_events_max(b"\xffmax x"), None);
    }

    #[test]
    fn container_shapes() {
        for path in [
            format!("/system.slice/docker-{CONTAINER_ID}.scope"),
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1_2.slice/cri-containerd-{CONTAINER_ID}.scope"),
            format!("/machine.slice/crio-{CONTAINER_ID}.scope"),
            format!("/docker/{CONTAINER_ID}"),
        ] {
            assert!(looks_like_container(path.as_bytes()), "{path}");
        }
        assert!(!looks_like_container(b"/system.slice/cron.service"));
        assert!(!looks_like_container(b"/"));
    }
}
