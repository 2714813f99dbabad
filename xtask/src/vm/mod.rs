//! `cargo xtask vm-test`: the end-to-end suite on other kernels than the build machine's.
//!
//! Each pinned Debian cloud kernel boots in qemu (TCG: these machines have no KVM) from an
//! initramfs holding busybox, static builds of reapwatch, the zombie helper and the test
//! executables, and an `/init` that mounts what they need, runs them and powers off. qemu
//! exits 0 whatever happens inside, so the verdict comes from the serial log: every test
//! executable must end with `test result: ok` and exit 0, and `/init` must reach its last line.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use self::{cpio::Cpio, debian::Apt, guest::GuestRun, root::GuestRoot};
use crate::{
    cross::Arch,
    process::{self, workspace_root},
};

mod cpio;
mod debian;
mod guest;
mod root;

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
    /// What `cargo xtask test` runs there: `None`, every test executable; else a smoke run of
    /// these (`vm-test` always runs them all).
    smoke_in_test: Option<&'static [&'static str]>,
    arch: Arch,
    kernel: Kernel,
    cgroups: Cgroups,
    /// Who runs it, and which of the programs' paths it takes.
    why: &'static str,
    /// CPUs the kernel sizes per-CPU memory for (`-smp 2,maxcpus=N`); two are online.
    possible_cpus: u32,
    /// Test executables this machine runs, in `test` and `vm-test` alike (all without it),
    /// each with `--include-ignored --nocapture`: a machine for one question, whose
    /// measurements the log shows.
    only_tests: Option<&'static [&'static str]>,
}

impl Machine {
    fn name(&self) -> String {
        let cpus = if self.possible_cpus > 2 {
            format!("-cpus{}", self.possible_cpus)
        } else {
            String::new()
        };
        format!(
            "{}-cgroup-{}{cpus}",
            self.kernel.package,
            self.cgroups.name()
        )
    }
}

const MACHINES: &[Machine] = &[
    Machine {
        smoke_in_test: None,
        arch: Arch::Amd64,
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
        possible_cpus: 2,
        only_tests: None,
    },
    Machine {
        smoke_in_test: None,
        arch: Arch::Amd64,
        kernel: Kernel {
            package: "linux-image-6.1.0-56-cloud-amd64",
            version: "6.1.192-2",
            source: Source::Apt,
        },
        cgroups: Cgroups::V2,
        why: "Amazon Linux 2023, Debian 12: 6.1 with cgroup v2 only; sched_process_exit \
              without group_dead",
        possible_cpus: 2,
        only_tests: None,
    },
    // Per-CPU memory is sized for the possible CPUs: a 192-vCPU node's, booted cheaply with
    // two online. It runs the memory test alone, its measurement of 100 000 zombies included.
    Machine {
        smoke_in_test: None,
        arch: Arch::Amd64,
        kernel: Kernel {
            package: "linux-image-6.1.0-56-cloud-amd64",
            version: "6.1.192-2",
            source: Source::Apt,
        },
        cgroups: Cgroups::V2,
        why: "the largest nodes (192 vCPUs): the maps' memory against its formula, and serve's \
              peak with 100 000 zombies",
        possible_cpus: 192,
        only_tests: Some(&["memory"]),
    },
    Machine {
        smoke_in_test: None,
        arch: Arch::Amd64,
        kernel: Kernel {
            package: "linux-image-6.12.101+deb12-cloud-amd64",
            version: "6.12.101-1~deb12u1",
            source: Source::Apt,
        },
        cgroups: Cgroups::Hybrid,
        why: "6.12 with systemd's hybrid cgroups, as the build machine but an older kernel",
        possible_cpus: 2,
        only_tests: None,
    },
    // `test` runs what 6.14 changed (refused forks counted hierarchically) and a smoke set:
    // the whole suite there takes CI's budget; `vm-test --only 6.18.15` runs everything.
    Machine {
        smoke_in_test: Some(&["pod_limit", "cli", "storm", "zombie_shapes"]),
        arch: Arch::Amd64,
        kernel: Kernel {
            package: "linux-image-6.18.15+deb13-cloud-amd64",
            version: "6.18.15-1~bpo13+1",
            source: Source::Archive {
                url: "http://deb.debian.org/debian/pool/main/l/linux-signed-amd64/linux-image-6.18.15+deb13-cloud-amd64_6.18.15-1~bpo13+1_amd64.deb",
                sha256: "5a507681ea8c978d02265a7fec2f02c9588fb48b54b7f71edc1059e86007f3ec",
            },
        },
        cgroups: Cgroups::V2,
        why: "Debian 13 backports, nodes on cgroup v2 with a kernel of 6.14 or later: \
              pids.events counts refused forks hierarchically, at the limiting cgroup and \
              its ancestors, with pids.events.local beside it. (6.16.12 oopsed twice under \
              TCG on an int3 in a tracepoint call site being patched: do_exit, \
              delayed_put_task_struct)",
        possible_cpus: 2,
        only_tests: None,
    },
    // Under emulation of another architecture the timing-heavy tests (serve with 500 zombies
    // beside others, ages within tenths of a second) flaked in 2 of 3 fresh-clone runs: CI
    // loads the programs and runs a leak and a storm there; vm-test runs everything.
    Machine {
        smoke_in_test: Some(&["cli", "storm", "zombie_shapes"]),
        arch: Arch::Arm64,
        kernel: Kernel {
            package: "linux-image-6.1.0-56-cloud-arm64",
            version: "6.1.192-2",
            source: Source::Apt,
        },
        cgroups: Cgroups::V2,
        why: "Graviton nodes (Amazon Linux 2023 on arm64): 6.1 with cgroup v2; the same eBPF \
              object, reapwatch and the tests built for aarch64",
        possible_cpus: 2,
        only_tests: None,
    },
];

/// Where the test executables find the workspace binaries (`current_exe()/../..`), as in
/// `target/<profile>/deps`.
const GUEST_PROFILE_DIR: &str = "reapwatch/target/release";

/// Test executables left out of the VM, with the reason.
const HOST_ONLY_TESTS: &[(&str, &str)] = &[
    (
        "beside_tracers",
        "runs bpftrace, whose LLVM, clang and z3 libraries (about 200 MB) would double the \
         initramfs, and which compiles its script with LLVM in the guest: minutes under \
         emulation",
    ),
    (
        "hostile_clients",
        "holds the endpoint to wall-clock bounds (a first login within 2 s under a flood of \
         bcrypt checks at cost 10) that software emulation cannot meet (2.1 s in the 5.10 \
         guest); what it tests is the endpoint, which no kernel changes",
    ),
    (
        "kubelet",
        "forecasts against a leak of hundreds of tasks a second for 12 s, which a guest under \
         software emulation does not make; reading the kubelet's settings and the trend model \
         run the same on the host",
    ),
    (
        "liveness",
        "waits for serve to be ready beside 8000 zombies, whose first reconcile under software \
         emulation outlasts the wait (5.10 guest: never ready); the sampler's liveness is the \
         endpoint's, which no kernel changes",
    ),
    (
        "datadog",
        "runs the Datadog Agent's Python check and Helm's engine from the venvs under target/ \
         (Python and a 75 MB Helm wheel); it tests the chart and the exposition, which no \
         kernel changes",
    ),
    (
        "layers",
        "reads tracer-user's source, which a guest does not carry; the imports it checks are \
         the same on every kernel",
    ),
];

/// Programs the tests run, each with the loader and libraries it names: util-linux's setpriv
/// (busybox's lacks --reuid), bash and tmux to drive `top`, a real Prometheus and promtool,
/// openssl and curl for the TLS tests, bpftool to read the kernel's BTF with a parser not ours.
/// Guest paths, from the guest's root (see `root`).
const GUEST_PROGRAMS: &[&str] = &[
    "usr/bin/setpriv",
    "bin/bash",
    "usr/bin/prometheus",
    "usr/bin/promtool",
    "usr/bin/tmux",
    "usr/bin/openssl",
    "usr/bin/curl",
    "usr/sbin/bpftool",
];

/// Terminal descriptions tmux and the `top` tests look up, and the UTF-8 locale tmux needs.
const GUEST_DIRS: &[&str] = &[
    "lib/terminfo",
    "usr/share/terminfo",
    "usr/lib/locale/C.utf8",
];

/// Data files of those programs: openssl's configuration.
const GUEST_FILES: &[&str] = &["usr/lib/ssl/openssl.cnf"];

/// One boot: a few seconds to boot, minutes of emulated tests; a hung guest is killed.
const BOOT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

const INIT: &str = r#"#!/bin/busybox sh
# PID 1 of the test VM: mount what reapwatch and the tests need, run them, power off.
/bin/busybox --install -s /bin
# Host tools in /usr/bin before busybox's applets of the same name.
export PATH=/usr/bin:/usr/sbin:/bin HOME=/ TMPDIR=/tmp TERM=xterm-256color
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
# A smoke run names its executables: reapwatch.tests=storm,cli,...
only=$(sed -n 's/.*reapwatch\.tests=\([a-z_,]*\).*/\1/p' /proc/cmdline)
# A machine for one question also runs its executables' ignored measurements, and shows
# what they print: reapwatch.args=--include-ignored,--nocapture
args=$(sed -n 's/.*reapwatch\.args=\([a-z,-]*\).*/\1/p' /proc/cmdline | tr , ' ')
for test in target/release/deps/*; do
    name=${test##*/}
    case ",$only," in ,,|*",${name%-*},"*) ;; *) continue ;; esac
    echo "reapwatch-vm: begin ${test##*/}"
    "$test" $args
    echo "reapwatch-vm: end ${test##*/} rc=$?"
done
echo "reapwatch-vm: all done"
poweroff -f
"#;

/// Boots the machines whose name contains `only` (all without it); `smoke` runs each
/// machine's smoke set where it has one (`cargo xtask test`), else every test executable.
/// `tests`: only these test executables (by target name), on every machine booted.
pub fn run(only: Option<&str>, smoke: bool, tests: &[String]) -> Result<()> {
    let machines: Vec<&Machine> = MACHINES
        .iter()
        .filter(|m| only.is_none_or(|only| m.name().contains(only)))
        .collect();
    if machines.is_empty() {
        bail!("no machine of the matrix matches {only:?}");
    }
    let cache = workspace_root().join("target/vm-cache");
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let mut initramfs = BTreeMap::new();
    for arch in machines.iter().map(|m| m.arch) {
        if !initramfs.contains_key(arch.oci_name()) {
            let out = cache.join(format!("initramfs-{}.cpio", arch.oci_name()));
            build_initramfs(arch, &cache, &out)?;
            initramfs.insert(arch.oci_name(), out);
        }
    }

    let mut failed = Vec::new();
    let mut summary = String::new();
    for machine in machines {
        let vmlinuz = kernel_image(&cache, machine)?;
        let log = cache.join(format!("{}.log", machine.name()));
        let started = Instant::now();
        let machine_tests = machine
            .only_tests
            .or(machine.smoke_in_test.filter(|_| smoke))
            .unwrap_or(&[]);
        let tests: Vec<&str> = if tests.is_empty() {
            machine_tests.to_vec()
        } else {
            tests.iter().map(String::as_str).collect()
        };
        let boot_once = || -> Result<GuestRun> {
            boot(
                machine,
                &tests,
                &vmlinuz,
                &initramfs[machine.arch.oci_name()],
                &log,
            )?;
            let serial =
                fs::read(&log).with_context(|| format!("cannot read {}", log.display()))?;
            Ok(GuestRun::parse(&String::from_utf8_lossy(&serial)))
        };
        let mut run = boot_once()?;
        if run.hit_the_emulated_text_patching_race() {
            let first = log.with_extension("int3.log");
            fs::rename(&log, &first).with_context(|| format!("cannot keep {}", first.display()))?;
            summary.push_str(&format!(
                "\n== {}: the kernel stopped on an int3 of emulated text patching (serial \
                 log {}); booted once more\n",
                machine.name(),
                first.display()
            ));
            run = boot_once()?;
        }
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

/// The kernel image of a machine's pinned package, downloaded once into `cache`.
fn kernel_image(cache: &Path, machine: &Machine) -> Result<PathBuf> {
    let Kernel {
        package,
        version,
        source,
    } = &machine.kernel;
    let unpacked = cache.join(format!("{package}_{version}"));
    let boot_dir = unpacked.join("boot");
    if let Some(image) = find_vmlinuz(&boot_dir) {
        return Ok(image);
    }
    // apt names the file PACKAGE_VERSION_ARCH.deb with ':' (an epoch) escaped.
    let deb = cache.join(format!(
        "{package}_{}_{}.deb",
        version.replace(':', "%3a"),
        machine.arch.oci_name()
    ));
    if !deb.exists() {
        match source {
            Source::Apt => Apt::new(cache, machine.arch)?
                .download(cache, &[&format!("{package}={version}")])?,
            Source::Archive { url, sha256 } => debian::download_checked(url, sha256, &deb)?,
        }
    }
    // Only the image: the modules are not needed (virtio, serial, BPF, cgroups are built in).
    debian::unpack(&deb, &unpacked, Some("./boot/vmlinuz-*"))?;
    find_vmlinuz(&boot_dir).with_context(|| format!("no vmlinuz in {}", deb.display()))
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

/// Builds for `arch` and returns the executables cargo reports, by target name: test
/// harnesses if `tests`, else programs.
fn cargo_executables(arch: Arch, args: &[&str], tests: bool) -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = process::cargo_command(None);
    cmd.args(args)
        .args([
            "--release",
            "--target",
            arch.rust_target(),
            "--message-format=json-render-diagnostics",
        ])
        .args(["--package", "reapwatch", "--package", "reapwatch-tests"])
        .stdout(Stdio::piped());
    let target = arch.rust_target();
    eprintln!("xtask: cargo {} --target {target}", args.join(" "));
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
        bail!("cargo {} --target {target} failed", args.join(" "));
    }
    Ok(executables)
}

/// Busybox, the static binaries laid out as under `target/`, the programs the tests run with
/// their libraries and data, and `/init`; for `arch`.
fn build_initramfs(arch: Arch, cache: &Path, out: &Path) -> Result<()> {
    arch.install_target()?;
    let tests = cargo_executables(arch, &["test", "--no-run"], true)?;
    let binaries = cargo_executables(arch, &["build", "--bins"], false)?;
    let root = GuestRoot::of(arch, cache)?;

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
    archive.file("bin/busybox", &root.read("bin/busybox")?, 0o755);
    archive.parents_of("etc/hosts");
    archive.file("etc/hosts", b"127.0.0.1 localhost\n::1 localhost\n", 0o644);
    for program in GUEST_PROGRAMS {
        for file in root.with_libraries(program)? {
            archive.parents_of(&file);
            archive.file(&file, &root.read(&file)?, 0o755);
        }
    }
    for dir in GUEST_DIRS {
        archive.tree(&root.path(dir), dir)?;
    }
    for file in GUEST_FILES {
        archive.parents_of(file);
        archive.file(file, &root.read(file)?, 0o644);
    }
    for (name, exe) in &binaries {
        if ["reapwatch", "zombie-helper"].contains(&name.as_str()) {
            archive.file(&format!("{GUEST_PROFILE_DIR}/{name}"), &read(exe)?, 0o755);
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
            &read(exe)?,
            0o755,
        );
    }
    fs::write(out, archive.finish()).with_context(|| format!("cannot write {}", out.display()))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Boots one machine; the serial console goes to `log`.
/// `tests`: the test executables to run, by target name; empty: all.
fn boot(
    machine: &Machine,
    tests: &[&str],
    vmlinuz: &Path,
    initramfs: &Path,
    log: &Path,
) -> Result<()> {
    let _ = fs::remove_file(log);
    // The arm64 CPU is a Graviton2's: `max` emulates pointer authentication, three times
    // slower under TCG.
    let (qemu, machine_args, console): (&str, &[&str], &str) = match machine.arch {
        Arch::Amd64 => ("qemu-system-x86_64", &["-cpu", "max"], "ttyS0"),
        Arch::Arm64 => (
            "qemu-system-aarch64",
            &["-machine", "virt", "-cpu", "neoverse-n1"],
            "ttyAMA0",
        ),
    };
    let mut cmd = Command::new(qemu);
    // Memory for the unpacked initramfs (Prometheus and promtool are 50 MB each) and the
    // tests.
    cmd.args(machine_args)
        .args(["-accel", "tcg", "-m", "4096"])
        .arg("-smp")
        .arg(match machine.possible_cpus {
            2 => "2".to_owned(),
            cpus => format!("2,maxcpus={cpus}"),
        })
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
            "console={console} quiet loglevel=3 panic=-1 oops=panic rdinit=/init \
             reapwatch.cgroups={} reapwatch.tests={} reapwatch.args={}",
            machine.cgroups.name(),
            tests.join(","),
            if machine.only_tests.is_some() {
                "--include-ignored,--nocapture"
            } else {
                ""
            }
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
        .with_context(|| format!("cannot run {qemu} (cargo xtask setup installs it)"))?;
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
