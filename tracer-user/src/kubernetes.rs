//! Kubernetes attribution from what a node has on disk: pod UID and container ID from the
//! cgroup path, names from kubelet's log directories. No API credentials needed.

use std::{
    collections::HashMap,
    fs,
    os::unix::ffi::OsStringExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::escape;

/// What a cgroup path says about the container in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerRef {
    /// Pod UID with dashes, when the path is under kubelet's `kubepods` tree.
    pub pod_uid: Option<String>,
    /// 64-hex container ID (containerd, CRI-O, Docker, podman).
    pub container_id: Option<String>,
}

/// Parses the cgroupfs and systemd driver layouts of kubelet and the runtimes:
/// `/kubepods/burstable/pod<uid>/<id>`, `/kubepods.slice/kubepods-besteffort.slice/
/// kubepods-besteffort-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `docker-<id>.scope`, `/docker/<id>`.
pub fn parse_path(path: &str) -> ContainerRef {
    let mut found = ContainerRef::default();
    for segment in path.split('/') {
        if let Some(uid) = pod_uid(segment) {
            found.pod_uid = Some(uid);
        } else if let Some(id) = container_id(segment) {
            found.container_id = Some(id);
        }
    }
    found
}

/// The pod's own cgroup: the path up to the segment that names the pod, which holds the
/// pod's containers (and carries `podPidsLimit` as its `pids.max`).
pub fn pod_cgroup(path: &str) -> Option<&str> {
    let mut end = 0;
    for segment in path.split('/') {
        let at = end + segment.len();
        if pod_uid(segment).is_some() {
            return Some(&path[..at]);
        }
        end = at + 1;
    }
    None
}

fn pod_uid(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".slice").unwrap_or(segment);
    let uid = match name.rfind("-pod") {
        Some(at) if name.starts_with("kubepods") => &name[at + 4..],
        _ => name.strip_prefix("pod")?,
    };
    // The systemd driver writes the UID's dashes as underscores.
    let uid = uid.replace('_', "-");
    let is_uid = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    is_uid.then_some(uid)
}

fn container_id(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    // conmon runs beside a CRI-O container, it is not the container.
    if name.starts_with("crio-conmon-") {
        return None;
    }
    let id = name.rsplit('-').next()?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

/// Namespace, pod and container names; empty outside Kubernetes or when not resolvable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodLabels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl PodLabels {
    /// Whether every name the container's path calls for was found.
    pub fn complete_for(&self, container: &ContainerRef) -> bool {
        let pod_missing = container.pod_uid.is_some() && self.pod.is_empty();
        let container_missing = container.container_id.is_some()
            && container.pod_uid.is_some()
            && self.container.is_empty();
        !(pod_missing || container_missing)
    }
}

/// Names from kubelet's log layout: `<pods_dir>/<namespace>_<pod>_<uid>/<container>/` and the
/// `<containers_dir>/<pod>_<namespace>_<container>-<id>.log` symlinks beside it.
pub struct PodDirectory {
    pods_dir: PathBuf,
    containers_dir: PathBuf,
    pods: HashMap<String, (String, String)>,
    containers: HashMap<String, String>,
    scanned_at: Option<Instant>,
}

/// A miss rescans the directories at most this often, so an unknown cgroup cannot make
/// every sample list them again.
const RESCAN_AFTER: Duration = Duration::from_secs(10);

impl PodDirectory {
    /// `pods_dir` is kubelet's `/var/log/pods` as mounted here; container symlinks are read
    /// from its sibling `containers`.
    pub fn new(pods_dir: &Path) -> Self {
        let containers_dir = pods_dir
            .parent()
            .unwrap_or(Path::new("/"))
            .join("containers");
        Self {
            pods_dir: pods_dir.to_path_buf(),
            containers_dir,
            pods: HashMap::new(),
            containers: HashMap::new(),
            scanned_at: None,
        }
    }

    pub fn labels(&mut self, container: &ContainerRef) -> PodLabels {
        let mut labels = self.lookup(container);
        if !labels.complete_for(container)
            && self
                .scanned_at
                .is_none_or(|at| at.elapsed() >= RESCAN_AFTER)
        {
            self.scan();
            labels = self.lookup(container);
        }
        labels
    }

    fn lookup(&self, container: &ContainerRef) -> PodLabels {
        let mut labels = PodLabels::default();
        if let Some((namespace, pod)) = container
            .pod_uid
            .as_ref()
            .and_then(|uid| self.pods.get(uid))
        {
            labels.namespace = namespace.clone();
            labels.pod = pod.clone();
            if let Some(name) = container
                .container_id
                .as_ref()
                .and_then(|id| self.containers.get(id))
            {
                labels.container = name.clone();
            }
        }
        labels
    }

    fn scan(&mut self) {
        self.scanned_at = Some(Instant::now());
        self.pods = entries(&self.pods_dir)
            .filter_map(|name| parse_pod_dir(&name))
            .collect();
        self.containers = entries(&self.containers_dir)
            .filter_map(|name| parse_container_log(&name))
            .collect();
    }
}

/// A pod's log directory, `<namespace>_<pod>_<uid>`, as `(uid, (namespace, pod))`.
/// Namespaces and pod names cannot contain '_', UIDs neither.
fn parse_pod_dir(name: &[u8]) -> Option<(String, (String, String))> {
    let name = escape::lossy(name);
    let mut parts = name.splitn(3, '_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    Some((uid.to_owned(), (namespace.to_owned(), pod.to_owned())))
}

/// A container's log link, `<pod>_<namespace>_<container>-<id>.log`, as `(id, container)`.
fn parse_container_log(name: &[u8]) -> Option<(String, String)> {
    let name = escape::lossy(name);
    let stem = name.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    let container = rest.splitn(3, '_').nth(2)?;
    Some((id.to_owned(), container.to_owned()))
}

/// Raw names: kubelet names these after what a tenant chose, and a name that is not UTF-8
/// is still shown (lossily) rather than dropped.
fn entries(dir: &Path) -> impl Iterator<Item = Vec<u8>> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_cgroup_of_a_container() {
        assert_eq!(
            pod_cgroup("/kubepods/burstable/pod4a1f2c9e-0000-4000-8000-000000000001/0c3e"),
            Some("/kubepods/burstable/pod4a1f2c9e-0000-4000-8000-000000000001")
        );
        assert_eq!(
            pod_cgroup(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod4a1f2c9e_0000_4000_8000_000000000001.slice/cri-containerd-ab.scope"
            ),
            Some("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod4a1f2c9e_0000_4000_8000_000000000001.slice")
        );
        assert_eq!(pod_cgroup("/system.slice/kubelet.service"), None);
    }

    const UID: &str = "5f3a8c1e-2b4d-4e6f-8a9b-0c1d2e3f4a5b";
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn expect(path: &str, uid: Option<&str>, id: Option<&str>) {
        let parsed = parse_path(path);
        assert_eq!(parsed.pod_uid.as_deref(), uid, "{path}");
        assert_eq!(parsed.container_id.as_deref(), id, "{path}");
    }

    #[test]
    fn containerd_systemd_driver() {
        let uid = UID.replace('-', "_");
        expect(
            &format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope"),
            Some(UID),
            Some(ID),
        );
        // Guaranteed QoS pods sit directly under kubepods.slice.
        expect(
            &format!("/kubepods.slice/kubepods-pod{uid}.slice/cri-containerd-{ID}.scope"),
            Some(UID),
            Some(ID),
        );
    }

    #[test]
    fn cgroupfs_driver() {
        expect(
            &format!("/kubepods/burstable/pod{UID}/{ID}"),
            Some(UID),
            Some(ID),
        );
        expect(&format!("/kubepods/pod{UID}/{ID}"), Some(UID), Some(ID));
        expect(
            &format!("/kubepods/besteffort/pod{UID}/crio-{ID}"),
            Some(UID),
            Some(ID),
        );
    }

    #[test]
    fn crio_and_docker_systemd() {
        let uid = UID.replace('-', "_");
        expect(&format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/crio-{ID}.scope"), Some(UID), Some(ID));
        expect(&format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/docker-{ID}.scope"), Some(UID), Some(ID));
        expect(
            &format!("/kubepods.slice/kubepods-pod{uid}.slice/crio-conmon-{ID}.scope"),
            Some(UID),
            None,
        );
    }

    #[test]
    fn outside_kubernetes() {
        expect(&format!("/system.slice/docker-{ID}.scope"), None, Some(ID));
        expect(&format!("/docker/{ID}"), None, Some(ID));
        expect("/system.slice/cron.service", None, None);
        expect("/", None, None);
        // A pod-looking segment outside a UID shape is not a pod.
        expect("/podcast.service", None, None);
    }

    #[test]
    fn names_from_log_directories() {
        let root = std::env::temp_dir().join(format!("reapwatch-k8s-{}", std::process::id()));
        let pods = root.join("pods");
        fs::create_dir_all(pods.join(format!("payments_api-7d9f_{UID}/server"))).unwrap();
        fs::create_dir_all(root.join("containers")).unwrap();
        fs::write(
            root.join(format!("containers/api-7d9f_payments_server-{ID}.log")),
            "",
        )
        .unwrap();

        let mut directory = PodDirectory::new(&pods);
        let container = ContainerRef {
            pod_uid: Some(UID.to_owned()),
            container_id: Some(ID.to_owned()),
        };
        let labels = directory.labels(&container);
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            labels,
            PodLabels {
                namespace: "payments".into(),
                pod: "api-7d9f".into(),
                container: "server".into()
            }
        );
        assert_eq!(
            directory.labels(&ContainerRef::default()),
            PodLabels::default()
        );
    }

    #[test]
    fn non_utf8_log_names_are_shown_lossily() {
        use std::{ffi::OsStr, os::unix::ffi::OsStrExt};

        let root = std::env::temp_dir().join(format!("reapwatch-k8s-bytes-{}", std::process::id()));
        let pods = root.join("pods");
        let mut raw = b"team\xff_api_".to_vec();
        raw.extend_from_slice(UID.as_bytes());
        fs::create_dir_all(pods.join(OsStr::from_bytes(&raw))).unwrap();
        fs::create_dir_all(root.join("containers")).unwrap();
        let mut log = b"api_team\xff_srv\xfe-".to_vec();
        log.extend_from_slice(format!("{ID}.log").as_bytes());
        fs::write(root.join("containers").join(OsStr::from_bytes(&log)), "").unwrap();

        let labels = PodDirectory::new(&pods).labels(&ContainerRef {
            pod_uid: Some(UID.to_owned()),
            container_id: Some(ID.to_owned()),
        });
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(labels.namespace, "team\u{fffd}");
        assert_eq!(labels.pod, "api");
        assert_eq!(labels.container, "srv\u{fffd}");
    }
}

/// Random and hostile names against the cgroup path and log name parsers: they never panic,
/// and the names kubelet and the runtimes write come back as written.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn uid() -> impl Strategy<Value = String> {
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    }

    fn container_id() -> impl Strategy<Value = String> {
        "[0-9a-f]{64}"
    }

    /// A name kubelet could be handed: anything but the separators of its layout.
    fn name() -> impl Strategy<Value = String> {
        "[^_/\0]{0,24}"
    }

    proptest! {
        #[test]
        fn cgroup_paths_never_panic(path in any::<String>()) {
            let _ = parse_path(&path);
        }

        #[test]
        fn hostile_bytes_in_paths_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_path(&escape::lossy(&bytes));
            let _ = crate::cgroup::looks_like_container(&bytes);
        }

        #[test]
        fn every_layout_round_trips(
            uid in uid(),
            id in container_id(),
            qos in prop::sample::select(vec!["", "burstable", "besteffort"]),
            runtime in prop::sample::select(vec!["cri-containerd", "crio", "docker"]),
            systemd in any::<bool>(),
        ) {
            let path = match (systemd, qos) {
                (true, "") => format!(
                    "/kubepods.slice/kubepods-pod{}.slice/{runtime}-{id}.scope",
                    uid.replace('-', "_")
                ),
                (true, qos) => format!(
                    "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{}.slice/{runtime}-{id}.scope",
                    uid.replace('-', "_")
                ),
                (false, "") => format!("/kubepods/pod{uid}/{id}"),
                (false, qos) => format!("/kubepods/{qos}/pod{uid}/{id}"),
            };
            prop_assert!(crate::cgroup::looks_like_container(path.as_bytes()));
            let parsed = parse_path(&path);
            prop_assert_eq!(parsed.pod_uid, Some(uid));
            prop_assert_eq!(parsed.container_id, Some(id));
        }

        #[test]
        fn log_names_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_pod_dir(&bytes);
            let _ = parse_container_log(&bytes);
        }

        #[test]
        fn pod_dirs_round_trip(namespace in name(), pod in name(), uid in "[^/\0]{0,40}") {
            let dir = format!("{namespace}_{pod}_{uid}");
            prop_assert_eq!(parse_pod_dir(dir.as_bytes()), Some((uid, (namespace, pod))));
        }

        #[test]
        fn container_logs_round_trip(
            pod in name(),
            namespace in name(),
            container in "[^/\0]{0,24}",
            id in container_id(),
        ) {
            let log = format!("{pod}_{namespace}_{container}-{id}.log");
            prop_assert_eq!(parse_container_log(log.as_bytes()), Some((id, container)));
        }

        #[test]
        fn non_utf8_names_are_decoded_lossily(
            pod in prop::collection::vec(any::<u8>().prop_filter("no separator", |b| *b != b'_'), 0..24),
            uid in uid(),
        ) {
            let mut dir = b"ns_".to_vec();
            dir.extend_from_slice(&pod);
            dir.extend_from_slice(format!("_{uid}").as_bytes());
            let parsed = parse_pod_dir(&dir);
            prop_assert_eq!(parsed, Some((uid, ("ns".to_owned(), escape::lossy(&pod)))));
        }
    }
}
