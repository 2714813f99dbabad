//! `cargo xtask vm-test`: the end-to-end suite on other kernels than the build machine's.
//!
//! Each pinned Debian cloud kernel boots in qemu (TCG: these machines have no KVM) from an
//! initramfs holding busybox, static builds of reapwatch, the zombie helper and the test
//! executables, and an `/init` that mounts what they need, runs them and powers off. qemu
//! exits 0 whatever happens inside, so the verdict comes from the serial log: every test
//! executable must end with `test result: ok` and exit 0, and `/init` must reach its last line.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use self::{cpio::Cpio, guest::GuestRun};
use crate::{process, workspace_root};

mod cpio;
mod guest;

/// Where a pinned kernel package comes from.
enum Source {
    /// `apt-get download PACKAGE=VERSION` from the suites the machine lists (apt checks the
    /// archive's signature).
    Apt,
    /// A suite the machine does not list: the .deb from Debian's archive, checked against the
    /// SHA-256 the suite's signed `Packages` index gives for it.
    Archive {
        url: &'static str,
        sha256: &'static str,
    },
}

struct Kernel {
    package: &'static str,
    version: &'static str,
    source: Source,
}

/// The cgroup hierarchies `/init` mounts, as the nodes that run each kernel mount them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cgroups {
    /// v1 controllers (pids, cpu, memory) and systemd's named hierarchy, no cgroup2 anywhere:
    /// Amazon Linux 2, older Ubuntu.
    V1,
    /// cgroup2 alone at /sys/fs/cgroup, with the controllers enabled for children.
    V2,
    /// systemd's hybrid layout: the v1 controllers, and cgroup2 at /sys/fs/cgroup/unified.
    Hybrid,
}

impl Cgroups {
    /// The value of `reapwatch.cgroups=` on the kernel command line, which `/init` reads.
    fn name(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
            Self::Hybrid => "hybrid",
        }
    }
}

/// One boot of the matrix: a kernel and a cgroup layout that nodes run together.
struct Machine {
    kernel: Kernel,
    cgroups: Cgroups,
    /// Who runs it, and which of the programs' paths it takes.
    why: &'static str,
}

impl Machine {
    fn name(&self) -> String {
        format!("{}-cgroup-{}", self.kernel.package, self.cgroups.name())
    }
}

const MACHINES: &[Machine] = &[
    Machine {
        kernel: Kernel {
            package: "linux-image-5.10.0-46-cloud-amd64",
            version: "5.10.262-1",
            source: Source::Archive {
                url: "http://deb.debian.org/debian-security/pool/updates/main/l/linux-signed-amd64/linux-image-5.10.0-46-cloud-amd64_5.10.262-1_amd64.deb",
                sha256: "18d94781d1b3052e21967ac2262239e5f14fbf511d6c3e110629d7aa35340760",
            },
        },
        cgroups: Cgroups::V1,
        why: "EKS on Amazon Linux 2: 5.10 with cgroup v1; no BPF compare-and-swap (hash map \
              only) and no bpf_get_current_task_btf (probe reads)",
    },
    Machine {
        kernel: Kernel {
            package: "linux-image-6.1.0-56-cloud-amd64",
            version: "6.1.192-2",
            source: Source::Apt,
        },
        cgroups: Cgroups::V2,
        why: "Amazon Linux 2023, Debian 12: 6.1 with cgroup v2 only; sched_process_exit \
              without group_dead",
    },
    Machine {
        kernel: Kernel {
            package: "linux-image-6.12.101+deb12-cloud-amd64",
            version: "6.12.101-1~deb12u1",
            source: Source::Apt,
        },
        cgroups: Cgroups::Hybrid,
        why: "6.12 with systemd's hybrid cgroups, as the build machine but an older kernel",
    },
];

/// Static binaries need no loader or libc in the initramfs; this target links statically by
/// default.
const TARGET: &str = "x86_64-unknown-linux-musl";

/// Where the test executables find the workspace binaries (`current_exe()/../..`), as in
/// `target/<profile>/deps`.
const GUEST_PROFILE_DIR: &str = "reapwatch/target/release";

/// Test executables left out of the VM, with the reason.
const HOST_ONLY_TESTS: &[(&str, &str)] = &[(
    "beside_tracers",
    "runs bpftrace, whose LLVM, clang and z3 libraries (about 200 MB) would double the \
     initramfs, and which compiles its script with LLVM in the guest: minutes under emulation",
)];

/// Host programs the tests run, copied with the shared libraries `ldd` lists: util-linux's
/// setpriv (busybox's lacks --reuid), a real Prometheus and promtool, tmux and the bash it
/// runs to drive `top`, openssl and curl for the TLS tests.
const HOST_TOOLS: &[&str] = &[
    "/usr/bin/setpriv",
    "/usr/bin/bash",
    "/usr/bin/prometheus",
    "/usr/bin/promtool",
    "/usr/bin/tmux",
    "/usr/bin/openssl",
    "/usr/bin/curl",
];

/// Terminal descriptions tmux and the `top` tests look up, and the UTF-8 locale tmux needs.
const HOST_DIRS: &[&str] = &[
    "/lib/terminfo",
    "/usr/share/terminfo",
    "/usr/lib/locale/C.utf8",
];

/// Data files of the host tools: openssl's configuration.
const HOST_FILES: &[&str] = &["/usr/lib/ssl/openssl.cnf"];

/// One boot: a few seconds to boot, minutes of emulated tests; a hung guest is killed.
const BOOT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

const INIT: &str = r#"#!/bin/busybox sh
# PID 1 of the test VM: mount what reapwatch and the tests need, run them, power off.
/bin/busybox --install -s /bin
# Host tools in /usr/bin before busybox's applets of the same name.
export PATH=/usr/bin:/bin HOME=/ TMPDIR=/tmp TERM=xterm-256color
# tmux needs a UTF-8 locale.
export LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
# The tests serve and scrape over loopback.
ip link set lo up
layout=$(sed -n 's/.*reapwatch\.cgroups=\([a-z0-9]*\).*/\1/p' /proc/cmdline)
case "$layout" in
v2)
    mount -t cgroup2 cgroup2 /sys/fs/cgroup
    echo "+pids +cpu +memory" > /sys/fs/cgroup/cgroup.subtree_control
    ;;
v1|hybrid)
    mount -t tmpfs cgroup /sys/fs/cgroup
    for controllers in pids cpu,cpuacct memory; do
        mkdir /sys/fs/cgroup/$controllers
        mount -t cgroup -o $controllers cgroup /sys/fs/cgroup/$controllers
    done
    mkdir /sys/fs/cgroup/systemd
    mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
    if [ "$layout" = hybrid ]; then
        mkdir /sys/fs/cgroup/unified
        mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
    fi
    ;;
esac
echo "reapwatch-vm: kernel $(uname -r)"
echo "reapwatch-vm: cgroups $layout: $(grep cgroup /proc/mounts | cut -d' ' -f2,3 | tr '\n' ' ')"
cd /reapwatch
echo "reapwatch-vm: snapshot $(target/release/reapwatch snapshot --json 2>&1 | tr -d '\n')"
for test in target/release/deps/*; do
    echo "reapwatch-vm: begin ${test##*/}"
    "$test"
    echo "reapwatch-vm: end ${test##*/} rc=$?"
done
echo "reapwatch-vm: all done"
poweroff -f
"#;

pub fn run(only: Option<&str>) -> Result<()> {
    let machines: Vec<&Machine> = MACHINES
        .iter()
        .filter(|m| only.is_none_or(|only| m.name().contains(only)))
        .collect();
    if machines.is_empty() {
        bail!("no machine of the matrix matches {only:?}");
    }
    let cache = workspace_root().join("target/vm-cache");
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let initramfs = cache.join("initramfs.cpio");
    process::run(Command::new("rustup").args(["target", "add", TARGET]))?;
    build_initramfs(&initramfs)?;

    let mut failed = Vec::new();
    let mut summary = String::new();
    for machine in machines {
        let vmlinuz = kernel_image(&cache, &machine.kernel)?;
        let log = cache.join(format!("{}.log", machine.name()));
        let started = Instant::now();
        boot(&vmlinuz, &initramfs, machine.cgroups, &log)?;
        let serial = fs::read(&log).with_context(|| format!("cannot read {}", log.display()))?;
        let run = GuestRun::parse(&String::from_utf8_lossy(&serial));
        summary.push_str(&run.summary(&machine.name(), machine.why, started.elapsed(), &log));
        if !run.passed() {
            failed.push(machine.name());
        }
    }
    eprint!("{summary}");
    if !failed.is_empty() {
        bail!("vm-test failed on {}", failed.join(", "));
    }
    Ok(())
}

/// The kernel image of a pinned package, downloaded once into `cache`.
fn kernel_image(cache: &Path, kernel: &Kernel) -> Result<PathBuf> {
    let Kernel {
        package,
        version,
        source,
    } = kernel;
    let unpacked = cache.join(format!("{package}_{version}"));
    let boot_dir = unpacked.join("boot");
    if let Some(image) = find_vmlinuz(&boot_dir) {
        return Ok(image);
    }
    // apt names the file PACKAGE_VERSION_ARCH.deb with ':' (an epoch) escaped.
    let deb = cache.join(format!(
        "{package}_{}_amd64.deb",
        version.replace(':', "%3a")
    ));
    if !deb.exists() {
        match source {
            Source::Apt => apt_download(cache, package, version)?,
            Source::Archive { url, sha256 } => archive_download(url, sha256, &deb)?,
        }
    }
    fs::create_dir_all(&unpacked)?;
    // Only the image: the modules are not needed (virtio, serial, BPF, cgroups are built in).
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(&deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run dpkg-deb")?;
    let tar = Command::new("tar")
        .args(["-x", "-f", "-", "-C"])
        .arg(&unpacked)
        .args(["--wildcards", "./boot/vmlinuz-*"])
        .stdin(dpkg.stdout.take().context("dpkg-deb stdout")?)
        .status()
        .context("cannot run tar")?;
    if !dpkg.wait()?.success() || !tar.success() {
        bail!("cannot unpack {}", deb.display());
    }
    find_vmlinuz(&boot_dir).with_context(|| format!("no vmlinuz in {}", deb.display()))
}

fn apt_download(cache: &Path, package: &str, version: &str) -> Result<()> {
    let spec = format!("{package}={version}");
    let download = || {
        Command::new("apt-get")
            .args(["download", "-qq", &spec])
            .current_dir(cache)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !download() {
        // A fresh machine has no package lists yet.
        process::run(Command::new("apt-get").args(["update", "-qq"]))?;
        if !download() {
            bail!("apt-get download {spec} failed (is the pinned version still in the archive?)");
        }
    }
    Ok(())
}

fn archive_download(url: &str, sha256: &str, deb: &Path) -> Result<()> {
    let partial = deb.with_extension("partial");
    process::run(
        Command::new("curl")
            .args(["-fsSL", "--retry", "3", "-o"])
            .arg(&partial)
            .arg(url),
    )?;
    let got = process::output(Command::new("sha256sum").arg(&partial))?;
    if got.split_whitespace().next() != Some(sha256) {
        let _ = fs::remove_file(&partial);
        bail!("{url}: SHA-256 is not the pinned {sha256}");
    }
    fs::rename(&partial, deb).with_context(|| format!("cannot write {}", deb.display()))
}

fn find_vmlinuz(boot_dir: &Path) -> Option<PathBuf> {
    fs::read_dir(boot_dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

/// Builds for `TARGET` and returns the executables cargo reports, by target name: test
/// harnesses if `tests`, else programs.
fn cargo_executables(args: &[&str], tests: bool) -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = process::cargo_command(None);
    cmd.args(args)
        .args([
            "--release",
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .args(["--package", "reapwatch", "--package", "reapwatch-tests"])
        .stdout(Stdio::piped());
    eprintln!("xtask: cargo {} --target {TARGET}", args.join(" "));
    let mut child = cmd.spawn().context("cannot run cargo")?;
    let mut executables = Vec::new();
    for line in BufReader::new(child.stdout.take().context("cargo stdout")?).lines() {
        let message: Value = serde_json::from_str(&line?).unwrap_or(Value::Null);
        // `test --no-run` also builds the binaries the integration tests run, and test
        // harnesses of binaries that hold no tests.
        let kinds = message["target"]["kind"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let wanted = if tests {
            message["profile"]["test"] == true
                && (kinds.contains(&"test".into()) || kinds.contains(&"lib".into()))
        } else {
            message["profile"]["test"] == false && kinds.contains(&"bin".into())
        };
        if message["reason"] != "compiler-artifact" || !wanted {
            continue;
        }
        if let (Some(name), Some(exe)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            executables.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    if !child.wait()?.success() {
        bail!("cargo {} --target {TARGET} failed", args.join(" "));
    }
    Ok(executables)
}

/// Busybox, the static binaries laid out as under `target/`, setpriv (util-linux, for the
/// unprivileged-user test) with its libraries, and `/init`.
fn build_initramfs(out: &Path) -> Result<()> {
    let tests = cargo_executables(&["test", "--no-run"], true)?;
    let binaries = cargo_executables(&["build", "--bins"], false)?;

    let mut archive = Cpio::default();
    for dir in [
        "bin",
        "usr",
        "usr/bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "root",
        "reapwatch",
        "reapwatch/target",
        GUEST_PROFILE_DIR,
    ] {
        archive.dir(dir);
    }
    // The kernel opens /dev/console for init before anything is mounted.
    archive.char_device("dev/console", 5, 1);
    archive.file("init", INIT.as_bytes(), 0o755);
    archive.file("bin/busybox", &read("/bin/busybox")?, 0o755);
    archive.parents_of("etc/hosts");
    archive.file("etc/hosts", b"127.0.0.1 localhost\n::1 localhost\n", 0o644);
    for tool in HOST_TOOLS {
        for file in shared_libraries(tool)?
            .into_iter()
            .chain([tool.to_string()])
        {
            let file = file.trim_start_matches('/');
            archive.parents_of(file);
            archive.file(file, &read(&format!("/{file}"))?, 0o755);
        }
    }
    for dir in HOST_DIRS {
        archive.tree(Path::new(dir))?;
    }
    for file in HOST_FILES {
        let file = file.trim_start_matches('/');
        archive.parents_of(file);
        archive.file(file, &read(&format!("/{file}"))?, 0o644);
    }
    for (name, exe) in &binaries {
        if ["reapwatch", "zombie-helper"].contains(&name.as_str()) {
            archive.file(
                &format!("{GUEST_PROFILE_DIR}/{name}"),
                &read_path(exe)?,
                0o755,
            );
        }
    }
    archive.dir(&format!("{GUEST_PROFILE_DIR}/deps"));
    for (name, exe) in &tests {
        if let Some((_, why)) = HOST_ONLY_TESTS.iter().find(|(t, _)| t == name) {
            eprintln!("xtask: vm-test leaves out {name}: {why}");
            continue;
        }
        let file = exe.file_name().context("test executable name")?;
        archive.file(
            &format!("{GUEST_PROFILE_DIR}/deps/{}", file.to_string_lossy()),
            &read_path(exe)?,
            0o755,
        );
    }
    fs::write(out, archive.finish()).with_context(|| format!("cannot write {}", out.display()))
}

fn read(path: &str) -> Result<Vec<u8>> {
    read_path(Path::new(path))
}

fn read_path(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The libraries and loader `ldd` lists for `binary`, as paths without the leading `/`.
fn shared_libraries(binary: &str) -> Result<Vec<String>> {
    // A static binary makes ldd exit 1 ("not a dynamic executable"): it needs nothing.
    let out = process::capture(Command::new("ldd").arg(binary))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find(|word| word.starts_with('/'))
                .map(|path| path.trim_start_matches('/').to_owned())
        })
        .collect())
}

/// Boots one kernel; the serial console goes to `log`.
fn boot(vmlinuz: &Path, initramfs: &Path, cgroups: Cgroups, log: &Path) -> Result<()> {
    let _ = fs::remove_file(log);
    let mut cmd = Command::new("qemu-system-x86_64");
    // Memory for the unpacked initramfs (Prometheus and promtool are 50 MB each) and the
    // tests.
    cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "4096"])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        // An oops ends the run at once (the log then lacks the last marker) instead of
        // hanging until the timeout.
        .arg("-append")
        .arg(format!(
            "console=ttyS0 quiet loglevel=3 panic=-1 oops=panic rdinit=/init reapwatch.cgroups={}",
            cgroups.name()
        ))
        .stdin(Stdio::null());
    eprintln!(
        "xtask: booting {} (log: {})",
        vmlinuz.display(),
        log.display()
    );
    let started = Instant::now();
    let mut qemu = cmd
        .spawn()
        .context("cannot run qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    loop {
        if let Some(status) = qemu.try_wait()? {
            eprintln!(
                "xtask: qemu exited ({status}) after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() > BOOT_TIMEOUT {
            qemu.kill()?;
            qemu.wait()?;
            eprintln!("xtask: killed qemu after {} s", BOOT_TIMEOUT.as_secs());
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
