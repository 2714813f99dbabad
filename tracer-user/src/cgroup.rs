//! Attribution: which cgroup a process belongs to, as a path the host shows.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::procfs::CgroupLine;

/// Picks the line of `/proc/<pid>/cgroup` that best names the process's container or unit:
/// a path that looks like a container first, then a non-root unified (v2) path, then the v1
/// `pids` or `name=systemd` path, then whatever is left.
pub fn select_path(lines: &[CgroupLine]) -> Option<&str> {
    let pick = |wanted: &dyn Fn(&CgroupLine) -> bool| {
        lines.iter().find(|l| wanted(l)).map(|l| l.path.as_str())
    };
    pick(&|l| looks_like_container(&l.path))
        .or_else(|| pick(&|l| l.is_unified() && l.path != "/"))
        .or_else(|| pick(&|l| l.has_controller("pids")))
        .or_else(|| pick(&|l| l.has_controller("name=systemd")))
        .or_else(|| lines.first().map(|l| l.path.as_str()))
}

/// Container runtimes name their cgroups after a 64-hex container id (Docker, containerd,
/// CRI-O, podman), and kubelet puts pods under `kubepods`.
pub fn looks_like_container(path: &str) -> bool {
    path.split('/').any(|segment| {
        segment.starts_with("kubepods")
            || segment
                .split(['-', '.'])
                .any(|part| part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

/// The unified (v2) hierarchy of this host, for cgroup id <-> path.
pub struct UnifiedHierarchy {
    root: Option<PathBuf>,
    paths_by_id: HashMap<u64, String>,
}

impl UnifiedHierarchy {
    /// Finds the v2 mount: `/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on
    /// hybrid ones. None on pure v1 hosts.
    pub fn discover(sys_fs_cgroup: &Path) -> Self {
        let root = [sys_fs_cgroup.to_path_buf(), sys_fs_cgroup.join("unified")]
            .into_iter()
            .find(|dir| dir.join("cgroup.controllers").exists());
        Self {
            root,
            paths_by_id: HashMap::new(),
        }
    }

    /// Where the unified hierarchy is mounted, if anywhere.
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// The cgroup id (kernfs inode) of a unified path such as `/system.slice/x.service`.
    pub fn id_of(&self, path: &str) -> Option<u64> {
        let root = self.root.as_ref()?;
        fs::metadata(root.join(path.trim_start_matches('/')))
            .ok()
            .map(|m| m.ino())
    }

    /// The path of a cgroup id, walking the hierarchy on a cache miss. Ids of removed cgroups
    /// stay unresolved.
    pub fn path_of(&mut self, id: u64) -> Option<String> {
        if let Some(path) = self.paths_by_id.get(&id) {
            return Some(path.clone());
        }
        let root = self.root.clone()?;
        self.paths_by_id.clear();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            let relative = dir.strip_prefix(&root).unwrap_or(Path::new(""));
            let path = format!("/{}", relative.to_string_lossy());
            self.paths_by_id.insert(meta.ino(), path);
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        self.paths_by_id.get(&id).cloned()
    }
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
        let lines = parse_cgroup_file(&text).unwrap();
        assert_eq!(
            select_path(&lines),
            Some(format!("/kubepods/burstable/pod1234/{CONTAINER_ID}").as_str())
        );
    }

    #[test]
    fn unified_path_before_v1_controllers() {
        let lines = parse_cgroup_file(
            "12:pids:/user.slice\n1:name=systemd:/user.slice/session-1.scope\n0::/system.slice/cron.service\n",
        )
        .unwrap();
        assert_eq!(select_path(&lines), Some("/system.slice/cron.service"));
    }

    #[test]
    fn v1_pids_when_unified_is_root() {
        let lines = parse_cgroup_file(
            "1:name=systemd:/system.slice/ssh.service\n12:pids:/system.slice/ssh.service/x\n0::/\n",
        )
        .unwrap();
        assert_eq!(select_path(&lines), Some("/system.slice/ssh.service/x"));
    }

    #[test]
    fn container_shapes() {
        for path in [
            format!("/system.slice/docker-{CONTAINER_ID}.scope"),
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1_2.slice/cri-containerd-{CONTAINER_ID}.scope"),
            format!("/machine.slice/crio-{CONTAINER_ID}.scope"),
            format!("/docker/{CONTAINER_ID}"),
        ] {
            assert!(looks_like_container(&path), "{path}");
        }
        assert!(!looks_like_container("/system.slice/cron.service"));
        assert!(!looks_like_container("/"));
    }
}
