//! `cargo xtask image`: reapwatch linked statically (musl) in images built FROM scratch with
//! the Containerfile's runtime stage, one per architecture (amd64, arm64) under one manifest
//! list, and the host image's end-to-end test under podman with exactly the privileges the
//! DaemonSet grants.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::{
    cross::Arch,
    deploy,
    process::{self, cargo, workspace_root},
    setup,
};

/// The manifest list's reference: one name for every platform's image.
pub fn image_ref() -> String {
    format!("localhost/reapwatch:{}", env!("CARGO_PKG_VERSION"))
}

/// The reference of one platform's image in the list.
fn platform_image_ref(arch: Arch) -> String {
    format!("{}-{}", image_ref(), arch.oci_name())
}

/// Builds each architecture's static binary, an image of it, and the manifest list that holds
/// them; returns the host's image, the one the image test runs.
pub fn build() -> Result<String> {
    let containerfile = workspace_root().join("Containerfile");
    builder_matches_setup(&fs::read_to_string(&containerfile)?)?;
    let images = Arch::ALL
        .into_iter()
        .map(|arch| platform_image(arch, &containerfile))
        .collect::<Result<Vec<_>>>()?;
    manifest_list(&image_ref(), &images)?;
    Ok(platform_image_ref(Arch::host()?))
}

/// The Containerfile's builder stage (for those with registries) must build with what setup
/// installs: the same bpf-linker and the pinned eBPF nightly, never the moving `nightly`.
fn builder_matches_setup(containerfile: &str) -> Result<()> {
    let linker = format!("bpf-linker@{}", setup::BPF_LINKER_VERSION);
    let toolchain = setup::ebpf_toolchain()?;
    for wanted in [&linker, &toolchain] {
        ensure!(
            containerfile.contains(wanted.as_str()),
            "the Containerfile's builder must install {wanted}, as xtask setup does"
        );
    }
    Ok(())
}

/// The runtime stage of the Containerfile around `arch`'s static binary. FROM scratch with
/// only a COPY, it builds for any platform without emulation.
fn platform_image(arch: Arch, containerfile: &Path) -> Result<String> {
    let binary = arch.static_reapwatch()?;
    // The Containerfile's builder stage needs registries; `--build-context builder=DIR`
    // stands this binary in for it, so the runtime stage built here is the one that ships.
    let context = workspace_root()
        .join("target/image-context")
        .join(arch.oci_name());
    let _ = fs::remove_dir_all(&context);
    fs::create_dir_all(context.join("out"))
        .with_context(|| format!("create {}", context.display()))?;
    fs::copy(&binary, context.join("out/reapwatch")).context("copy the binary")?;
    let context = context.to_str().context("workspace path is not UTF-8")?;
    let image = platform_image_ref(arch);
    buildah(&[
        "build",
        "--quiet",
        "--platform",
        &format!("linux/{}", arch.oci_name()),
        "--target",
        "runtime",
        "--build-context",
        &format!("builder={context}"),
        "--file",
        containerfile.to_str().context("path")?,
        "--tag",
        &image,
        context,
    ])?;
    eprintln!("xtask: built {image}");
    Ok(image)
}

/// Makes `list` the manifest list of `images` (made anew: an amended list would keep earlier
/// builds' instances) and checks it names every platform.
fn manifest_list(list: &str, images: &[String]) -> Result<()> {
    // `buildah rmi` on a list removes the host's image, not the list: `manifest rm`. Builds
    // before multi-arch tagged the amd64 image itself with this name: that tag goes.
    if let Err(err) = buildah(&["manifest", "rm", list]) {
        if err.to_string().contains("not a manifest list") {
            buildah(&["rmi", list])?;
        }
    }
    buildah(&["manifest", "create", list])?;
    for image in images {
        buildah(&[
            "manifest",
            "add",
            list,
            &format!("containers-storage:{image}"),
        ])?;
    }
    let inspected = buildah(&["manifest", "inspect", list])?;
    ensure_platforms(&serde_json::from_str(&inspected)?, &Arch::ALL)
        .with_context(|| format!("manifest list {list}"))?;
    eprintln!("xtask: built the manifest list {list}");
    Ok(())
}

/// Checks that a manifest list (`buildah manifest inspect`) holds exactly one linux image of
/// each of `arches`, and nothing else.
fn ensure_platforms(list: &Value, arches: &[Arch]) -> Result<()> {
    let mut platforms: Vec<String> = list["manifests"]
        .as_array()
        .context("no manifests")?
        .iter()
        .map(|m| {
            let platform = &m["platform"];
            format!(
                "{}/{}",
                platform["os"].as_str().unwrap_or("?"),
                platform["architecture"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let mut expected: Vec<String> = arches
        .iter()
        .map(|arch| format!("linux/{}", arch.oci_name()))
        .collect();
    platforms.sort();
    expected.sort();
    ensure!(
        platforms == expected,
        "holds {platforms:?}, not {expected:?}"
    );
    Ok(())
}

/// Runs buildah, its line logged; a failure carries what it printed.
fn buildah(args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("buildah");
    cmd.args(args);
    eprintln!("xtask: {}", process::line(&cmd));
    process::output(&mut cmd)
}

/// podman arguments granting what the DaemonSet grants, and nothing else. kubelet's
/// directories (its logs, its seccomp profiles) come from the stand-in node at `node_root`.
fn daemonset_privileges(daemonset: &Value, node_root: &Path) -> Result<Vec<String>> {
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    let mut args = vec!["--cap-drop=all".to_owned()];
    if pod["hostPID"] == true {
        args.push("--pid=host".into());
    }
    let added: Vec<&str> = security["capabilities"]["add"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !added.is_empty() {
        args.push(format!("--cap-add={}", added.join(",")));
    }
    if let Some(user) = security["runAsUser"].as_u64() {
        let group = security["runAsGroup"].as_u64().unwrap_or(user);
        args.push(format!("--user={user}:{group}"));
    }
    if security["readOnlyRootFilesystem"] == true {
        args.push("--read-only".into());
    }
    if security["allowPrivilegeEscalation"] == false {
        args.push("--security-opt=no-new-privileges".into());
    }
    match security["seccompProfile"]["type"].as_str() {
        Some("Unconfined") => args.push("--security-opt=seccomp=unconfined".into()),
        Some("RuntimeDefault") | None => {}
        Some("Localhost") => {
            let profile = security["seccompProfile"]["localhostProfile"]
                .as_str()
                .context("localhostProfile")?;
            let path = node_root.join(KUBELET_SECCOMP_DIR).join(profile);
            args.push(format!("--security-opt=seccomp={}", path.display()));
        }
        Some(other) => bail!("seccomp profile {other} is not reproduced by the image test"),
    }
    for mount in container["volumeMounts"].as_array().context("mounts")? {
        let volume = pod["volumes"]
            .as_array()
            .context("volumes")?
            .iter()
            .find(|v| v["name"] == mount["name"])
            .context("mount of an undeclared volume")?;
        let host = volume["hostPath"]["path"].as_str().context("hostPath")?;
        let host = match host.strip_prefix("/var/log/") {
            Some(kubelet_dir) => node_root.join("var/log").join(kubelet_dir),
            None => PathBuf::from(host),
        };
        let host = host.to_str().context("path")?;
        let ro = if mount["readOnly"] == true { ":ro" } else { "" };
        args.push(format!(
            "--volume={host}:{}{ro}",
            mount["mountPath"].as_str().context("mountPath")?
        ));
    }
    Ok(args)
}

/// Arguments to run any container on a CI machine: runc, because crun refuses hosts with
/// hybrid cgroups; and rlimits no higher than ours, because podman otherwise raises them to
/// its defaults, which fails where root lacks CAP_SYS_RESOURCE (this CI sandbox). RLIMIT_NPROC
/// is capped lower than ours: the sandbox refuses even our own value there; reapwatch starts
/// no processes, and with CAP_SYS_RESOURCE the limit does not apply to it.
fn runtime_args() -> Result<Vec<String>> {
    let limits = fs::read_to_string("/proc/self/limits").context("read /proc/self/limits")?;
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .context("no open files limit in /proc/self/limits")?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let [soft, hard, ..] = words[..] else {
        bail!("malformed /proc/self/limits line {line:?}");
    };
    let limit = |w: &str| if w == "unlimited" { "-1" } else { w }.to_owned();
    Ok(vec![
        "--runtime=runc".into(),
        format!("--ulimit=nofile={}:{}", limit(soft), limit(hard)),
        "--ulimit=nproc=4096:4096".into(),
    ])
}

fn podman(args: &[String]) -> Result<Output> {
    eprintln!("xtask: podman {}", args.join(" "));
    Command::new("podman")
        .args(args)
        .output()
        .context("cannot run podman")
}

/// Where the kubelet looks for Localhost seccomp profiles, below the node's root.
const KUBELET_SECCOMP_DIR: &str = "var/lib/kubelet/seccomp";

const POD_NAMESPACE: &str = "image-test";
const POD_NAME: &str = "leaky-7d9f";
const CONTAINER_NAME: &str = "agent";

/// A pod as kubelet leaves it on a node, for the names reapwatch finds without the API: the
/// container's cgroup as the cgroupfs driver names it (`/kubepods/burstable/pod<uid>/<id>`),
/// and the logs under a stand-in node root: `/var/log/pods/<ns>_<pod>_<uid>/<container>/0.log`
/// and `/var/log/containers/<pod>_<ns>_<container>-<id>.log`, a link to it by its absolute
/// path on the node, as kubelet makes them.
struct KubeletPod {
    node_root: PathBuf,
    /// The container's cgroup directory, in the hierarchy reapwatch counts by.
    cgroup: PathBuf,
    /// The cgroup's path as the host shows it, reapwatch's `cgroup` label.
    cgroup_path: String,
}

impl KubeletPod {
    fn create() -> Result<Self> {
        // Unique per run, shaped as kubelet's: a v4 UUID and a 64-hex container id.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_nanos();
        let uid = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            std::process::id(),
            nanos & 0xffff_ffff_ffff
        );
        let id = format!("{:032x}{nanos:032x}", std::process::id());

        let node_root = workspace_root().join("target/image-test/node");
        let _ = fs::remove_dir_all(&node_root);
        let pods = Path::new("/var/log/pods");
        let log = pods
            .join(format!("{POD_NAMESPACE}_{POD_NAME}_{uid}"))
            .join(CONTAINER_NAME)
            .join("0.log");
        let on_node = |path: &Path| node_root.join(path.strip_prefix("/").unwrap_or(path));
        fs::create_dir_all(on_node(log.parent().context("log dir")?))
            .context("create the stand-in /var/log/pods")?;
        fs::write(on_node(&log), "").context("write the stand-in container log")?;
        let containers = on_node(Path::new("/var/log/containers"));
        fs::create_dir_all(&containers).context("create the stand-in /var/log/containers")?;
        symlink(
            &log,
            containers.join(format!(
                "{POD_NAME}_{POD_NAMESPACE}_{CONTAINER_NAME}-{id}.log"
            )),
        )
        .context("link the container log")?;

        // Hybrid and v1 hosts count by the v1 pids hierarchy, v2 hosts by the unified one.
        let v1_pids = Path::new("/sys/fs/cgroup/pids");
        let hierarchy = if v1_pids.join("cgroup.procs").exists() {
            v1_pids
        } else {
            Path::new("/sys/fs/cgroup")
        };
        let cgroup_path = format!("/kubepods/burstable/pod{uid}/{id}");
        let cgroup = hierarchy.join(&cgroup_path[1..]);
        fs::create_dir_all(&cgroup)
            .with_context(|| format!("create the cgroup {}", cgroup.display()))?;
        Ok(Self {
            node_root,
            cgroup,
            cgroup_path,
        })
    }
}

impl Drop for KubeletPod {
    fn drop(&mut self) {
        // The container, its pod, then kubepods' own directories if this made them (a
        // directory still in use is not empty and stays). The zombies' last processes may
        // still be on their way out.
        for dir in self.cgroup.ancestors().take(4) {
            for _ in 0..100 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// `zombie-helper leak 3` in the pod's cgroup: three children exited and never reaped, on
/// the host.
struct Zombies {
    helper: Child,
    parent: u32,
}

impl Zombies {
    fn start(cgroup: &Path) -> Result<Self> {
        cargo(
            None,
            &[
                "build",
                "--package",
                "reapwatch-tests",
                "--bin",
                "zombie-helper",
            ],
        )?;
        let mut helper = Command::new(workspace_root().join("target/debug/zombie-helper"))
            .arg("--cgroup")
            .arg(cgroup)
            .args(["leak", "3"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start zombie-helper")?;
        let mut parent = helper.id();
        let stdout = helper.stdout.take().context("helper stdout")?;
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["ready"] => return Ok(Self { helper, parent }),
                ["parent", pid] => parent = pid.parse()?,
                _ => {}
            }
        }
        bail!("zombie-helper ended before it was ready")
    }
}

impl Drop for Zombies {
    fn drop(&mut self) {
        // End of stdin ends the helper, and its zombies with it.
        drop(self.helper.stdin.take());
        let _ = self.helper.wait();
    }
}

/// Runs the image as the DaemonSet runs it, with zombies on the host, and checks it finds
/// them; then checks it cannot without the DaemonSet's capabilities.
/// Runs `reapwatch snapshot` in `image` with the podman `args` given so far, and checks that it
/// fails saying `because`.
fn refused_snapshot(image: &str, mut args: Vec<String>, because: &str, what: &str) -> Result<()> {
    args.extend([
        "--entrypoint=/reapwatch".into(),
        image.into(),
        "snapshot".into(),
    ]);
    let out = podman(&args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains(because),
        "{what}: {stderr}"
    );
    Ok(())
}

pub fn test(image: &str) -> Result<()> {
    let daemonset = deploy::daemonset(&json!({}))?;
    let pod = KubeletPod::create()?;
    let privileges = daemonset_privileges(&daemonset, &pod.node_root)?;
    let zombies = Zombies::start(&pod.cgroup)?;

    let mut args = vec!["run".to_owned(), "--rm".into()];
    args.extend(runtime_args()?);
    let unprivileged_args = args.clone();
    args.extend(privileges.iter().cloned());
    args.extend([
        "--entrypoint=/reapwatch".into(),
        image.into(),
        "snapshot".into(),
        "--json".into(),
    ]);
    let out = podman(&args)?;
    ensure!(
        out.status.success(),
        "reapwatch snapshot in the image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).context("snapshot --json output")?;
    let parent = report["parents"]
        .as_array()
        .context("parents")?
        .iter()
        .find(|p| p["pid"] == zombies.parent)
        .with_context(|| format!("the image does not see host pid {}", zombies.parent))?;
    ensure!(
        parent["unreaped"] == 3 && parent["comm"] == "zombie-helper",
        "the image reports {parent}, not 3 zombies of zombie-helper"
    );

    // The privileges are needed, not decoration: the same run without them fails clearly.
    let mut args = unprivileged_args;
    args.extend(
        privileges
            .iter()
            .filter(|a| !a.starts_with("--cap-add="))
            .cloned(),
    );
    refused_snapshot(
        image,
        args,
        "permission denied",
        "without capabilities the image must refuse to run",
    )?;

    scrape(image, &daemonset, &privileges, &zombies, &pod)?;
    eprintln!("xtask: image {image} finds host zombies with the DaemonSet's privileges");

    // The chart's seccomp profile, installed on the stand-in node as the runbook says: serve
    // starts, samples, answers scrapes and stops under it.
    let daemonset = deploy::daemonset(&json!({ "seccomp": { "type": "Localhost" } }))?;
    let profile = daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]
        ["seccompProfile"]["localhostProfile"]
        .as_str()
        .context("the chart's localhostProfile")?;
    let installed = pod.node_root.join(KUBELET_SECCOMP_DIR).join(profile);
    fs::create_dir_all(installed.parent().context("profile dir")?)?;
    fs::copy(
        deploy::chart_file(&format!("seccomp/{profile}")),
        &installed,
    )
    .context("install the seccomp profile on the stand-in node")?;
    let privileges = daemonset_privileges(&daemonset, &pod.node_root)?;
    scrape(image, &daemonset, &privileges, &zombies, &pod)?;

    // Enforced, not ignored: the same profile without bpf() stops the tracer at its first map.
    let mut denying: Value = serde_json::from_str(&fs::read_to_string(&installed)?)?;
    for group in denying["syscalls"].as_array_mut().context("syscalls")? {
        if let Some(names) = group["names"].as_array_mut() {
            names.retain(|name| name != "bpf");
        }
    }
    fs::write(&installed, denying.to_string()).context("write the denying profile")?;
    let mut args = vec!["run".to_owned(), "--rm".into()];
    args.extend(runtime_args()?);
    args.extend(privileges);
    refused_snapshot(
        image,
        args,
        "failed to create map",
        "a profile without bpf() must stop reapwatch",
    )?;
    eprintln!("xtask: image {image} runs under the chart's seccomp profile");
    Ok(())
}

/// Removes the detached test container however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time=2", &self.0])
            .output();
    }
}

/// Runs the image's entrypoint (`reapwatch serve`) with the DaemonSet's arguments and scrapes
/// it. Skipped, saying so, while this build of reapwatch has no `serve` command.
fn scrape(
    image: &str,
    daemonset: &Value,
    privileges: &[String],
    zombies: &Zombies,
    pod: &KubeletPod,
) -> Result<()> {
    let mut probe = vec!["run".to_owned(), "--rm".into()];
    probe.extend(runtime_args()?);
    probe.extend([
        "--entrypoint=/reapwatch".into(),
        image.into(),
        "serve".into(),
        "--help".into(),
    ]);
    let out = podman(&probe)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            stderr.contains("unrecognized subcommand"),
            "reapwatch serve --help failed in the image: {stderr}"
        );
        eprintln!("xtask: image: this reapwatch has no `serve` command yet: /metrics not scraped");
        return Ok(());
    }
    // Host network for the scrape, on free ports rather than the chart's, which may be taken.
    let free_port =
        || -> Result<u16> { Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()) };
    let (port, health_port) = (free_port()?, free_port()?);
    let name = format!("reapwatch-image-test-{}", std::process::id());
    let mut args = vec![
        "run".to_owned(),
        "--detach".into(),
        format!("--name={name}"),
    ];
    args.extend(runtime_args()?);
    args.extend(privileges.iter().cloned());
    args.extend([
        "--network=host".into(),
        "--env=NODE_NAME=image-test".into(),
        image.into(),
    ]);
    for arg in daemonset["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        args.push(if arg.starts_with("--listen=") {
            format!("--listen=127.0.0.1:{port}")
        } else if arg.starts_with("--health-listen=") {
            format!("--health-listen=127.0.0.1:{health_port}")
        } else {
            arg.to_owned()
        });
    }
    let out = podman(&args)?;
    // Created even when it fails to start (a seccomp profile that stops the runtime): removed.
    let container = Container(name);
    ensure!(
        out.status.success(),
        "reapwatch serve did not start: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    // The kubelet's probes, on the health port as the DaemonSet points them.
    while http_get(health_port, "/readyz")
        .ok()
        .map(|(status, _)| status)
        != Some(200)
    {
        ensure!(Instant::now() < deadline, "/readyz not 200 within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(
        http_get(health_port, "/healthz")?.0 == 200,
        "/healthz not 200"
    );
    // The names, as kubelet's layout gives them to the DaemonSet's mounts.
    let labels = [
        format!("cgroup=\"{}\"", pod.cgroup_path),
        format!("namespace=\"{POD_NAMESPACE}\""),
        format!("pod=\"{POD_NAME}\""),
        format!("container=\"{CONTAINER_NAME}\""),
    ];
    let pid = format!("pid=\"{}\"", zombies.parent);
    let has = |metrics: &str, family: &str, labels: &[String]| {
        metrics.lines().any(|l| {
            l.starts_with(&format!("{family}{{"))
                && labels.iter().all(|label| l.contains(label.as_str()))
                && l.ends_with(" 3")
        })
    };
    let mut metrics = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !has(&metrics, "reapwatch_zombies", &labels) {
        ensure!(
            Instant::now() < deadline,
            "/metrics has no reapwatch_zombies{{{}}} 3 within 20 s:\n{}",
            labels.join(","),
            metrics
                .lines()
                .filter(|l| l.starts_with("reapwatch_zombies{"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
        let (status, text) = http_get(port, "/metrics")?;
        ensure!(status == 200, "/metrics answered {status}");
        metrics = text;
    }
    ensure!(
        has(
            &metrics,
            "reapwatch_parent_zombies",
            std::slice::from_ref(&pid)
        ),
        "/metrics has no reapwatch_parent_zombies{{{pid}}} 3"
    );
    // Every family served is in the contract the alerts and dashboard are checked on, with its
    // type. Some are absent while they have no series (no ETA while nothing grows).
    let served: BTreeMap<String, String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| {
            let kind = kind.trim();
            // OpenMetrics names a counter's family without the `_total` its samples carry.
            let name = match kind == "counter" && !name.ends_with("_total") {
                true => format!("{name}_total"),
                false => name.to_owned(),
            };
            (name, kind.to_owned())
        })
        .collect();
    let contract = deploy::contract()?;
    for (family, kind) in &served {
        ensure!(
            contract.get(family) == Some(kind),
            "/metrics serves {family} ({kind}), which the metric contract does not list so"
        );
    }
    // SIGTERM, as the kubelet stops it: a clean exit, its programs detached.
    let name = &container.0;
    let out = podman(&["stop".into(), "--time=10".into(), name.clone()])?;
    ensure!(out.status.success(), "podman stop {name} failed");
    let out = podman(&[
        "inspect".into(),
        "--format={{.State.ExitCode}}".into(),
        name.clone(),
    ])?;
    let code = String::from_utf8_lossy(&out.stdout);
    ensure!(
        code.trim() == "0",
        "reapwatch serve exited {} on SIGTERM",
        code.trim()
    );
    Ok(())
}

/// A minimal HTTP/1.0 GET: status code and body.
fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status line")?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_containerfile_builds_with_what_setup_installs() {
        let containerfile = fs::read_to_string(workspace_root().join("Containerfile")).unwrap();
        builder_matches_setup(&containerfile).unwrap();
    }

    fn list(platforms: &[(&str, &str)]) -> Value {
        let manifests: Vec<Value> = platforms
            .iter()
            .map(|(os, architecture)| {
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "platform": {"architecture": architecture, "os": os},
                })
            })
            .collect();
        serde_json::json!({"schemaVersion": 2, "manifests": manifests})
    }

    #[test]
    fn a_list_of_every_platform_passes() {
        let both = list(&[("linux", "arm64"), ("linux", "amd64")]);
        ensure_platforms(&both, &Arch::ALL).unwrap();
    }

    #[test]
    fn a_missing_or_stale_platform_fails() {
        let amd64 = list(&[("linux", "amd64")]);
        let err = ensure_platforms(&amd64, &Arch::ALL).unwrap_err();
        assert!(err.to_string().contains("linux/arm64"), "{err}");
        // An amended list keeps the previous build's instance beside the new one.
        let stale = list(&[("linux", "amd64"), ("linux", "arm64"), ("linux", "amd64")]);
        assert!(ensure_platforms(&stale, &Arch::ALL).is_err());
        assert!(ensure_platforms(&serde_json::json!({}), &Arch::ALL).is_err());
    }
}
