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

use crate::workspace_root;

/// Pinned kernels: `apt-get download PACKAGE=VERSION`. 6.1 (AL2023, Debian 12) has the
/// tracepoint layouts before 6.16 (no `group_dead` argument of `sched_process_exit`).
const KERNELS: &[(&str, &str)] = &[
    ("linux-image-6.1.0-56-cloud-amd64", "6.1.192-2"),
    (
        "linux-image-6.12.101+deb12-cloud-amd64",
        "6.12.101-1~deb12u1",
    ),
];

/// Static binaries need no loader or libc in the initramfs; this target links statically by
/// default.
const TARGET: &str = "x86_64-unknown-linux-musl";

/// Where the test executables find the workspace binaries (`current_exe()/../..`), as in
/// `target/<profile>/deps`.
const GUEST_PROFILE_DIR: &str = "reapwatch/target/release";

/// Test executables left out of the VM, with the reason.
const HOST_ONLY_TESTS: &[(&str, &str)] = &[
    (
        "beside_tracers",
        "runs bpftrace and exitsnoop, dynamically linked host tools",
    ),
    (
        "exporter",
        "attributes by the cgroup v1 pids hierarchy and scrapes over loopback (the VM has cgroup v2 only, no network)",
    ),
    ("cardinality", "scrapes reapwatch serve over loopback (no network in the VM)"),
    ("prometheus", "runs a real Prometheus server, a host tool"),
    ("top", "drives a terminal with tmux, a host tool"),
    (
        "field",
        "runs reapwatch serve over loopback and sets pids.max (no network, no pids controller in the VM)",
    ),
    ("serve_cli", "serves over loopback (no network in the VM)"),
    (
        "hostile_bytes",
        "scrapes serve over loopback and sets pids.max (no network, no pids controller in the VM)",
    ),
    (
        "tls",
        "runs Prometheus, openssl and curl, host tools, over loopback",
    ),
    (
        "hostile_clients",
        "runs Prometheus, a host tool, and attacks serve over loopback",
    ),
    ("adhoc", "sets pids.max in a test cgroup (the VM's cgroup v2 root enables no controllers)"),
];

/// One boot: a few seconds to boot, a few minutes of emulated tests; a hung guest is killed.
const BOOT_TIMEOUT: Duration = Duration::from_secs(20 * 60);

const MARK: &str = "reapwatch-vm:";

const INIT: &str = r#"#!/bin/busybox sh
# PID 1 of the test VM: mount what reapwatch and the tests need, run them, power off.
/bin/busybox --install -s /bin
# util-linux setpriv (/usr/bin) before busybox's, which lacks --reuid.
export PATH=/usr/bin:/bin HOME=/ TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
# The tests need the unified hierarchy at /sys/fs/cgroup.
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "reapwatch-vm: kernel $(uname -r)"
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

pub fn run() -> Result<()> {
    let cache = workspace_root().join("target/vm-cache");
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let initramfs = cache.join("initramfs.cpio");
    run_checked(Command::new("rustup").args(["target", "add", TARGET]))?;
    build_initramfs(&initramfs)?;

    let mut failed = Vec::new();
    let mut summary = String::new();
    for (package, version) in KERNELS {
        let vmlinuz = kernel_image(&cache, package, version)?;
        let log = cache.join(format!("{package}.log"));
        boot(&vmlinuz, &initramfs, &log)?;
        let serial = fs::read(&log).with_context(|| format!("cannot read {}", log.display()))?;
        let run = GuestRun::parse(&String::from_utf8_lossy(&serial));
        summary.push_str(&run.summary(package, &log));
        if !run.passed() {
            failed.push(*package);
        }
    }
    eprint!("{summary}");
    if !failed.is_empty() {
        bail!("vm-test failed on {}", failed.join(", "));
    }
    Ok(())
}

/// The kernel image of `package=version`, downloaded once into `cache`.
fn kernel_image(cache: &Path, package: &str, version: &str) -> Result<PathBuf> {
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
            run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
            if !download() {
                bail!(
                    "apt-get download {spec} failed (is the pinned version still in the archive?)"
                );
            }
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

fn run_checked(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Builds for `TARGET` and returns the executables cargo reports, by target name: test
/// harnesses if `tests`, else programs.
fn cargo_executables(args: &[&str], tests: bool) -> Result<Vec<(String, PathBuf)>> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(args)
        .args([
            "--release",
            "--target",
            TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .args(["--package", "reapwatch", "--package", "reapwatch-tests"])
        .current_dir(workspace_root())
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
    for lib in shared_libraries("/usr/bin/setpriv")? {
        archive.parents_of(&lib);
        archive.file(&lib, &read(&format!("/{lib}"))?, 0o755);
    }
    archive.file("usr/bin/setpriv", &read("/usr/bin/setpriv")?, 0o755);
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
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("cannot run ldd {binary}"))?;
    if !out.status.success() {
        bail!("ldd {binary} failed (is util-linux installed?)");
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find(|word| word.starts_with('/'))
                .map(|path| path.trim_start_matches('/').to_owned())
        })
        .collect())
}

/// A `newc` cpio archive, the format the kernel unpacks as initramfs.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    inode: u32,
    dirs: Vec<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.inode += 1;
        let fields = [
            self.inode,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        if !self.dirs.iter().any(|d| d == name) {
            self.dirs.push(name.to_owned());
            self.entry(name, 0o040755, (0, 0), &[]);
        }
    }

    fn parents_of(&mut self, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.dir(&prefix.clone());
        }
    }

    fn file(&mut self, name: &str, data: &[u8], perm: u32) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.bytes
    }
}

/// Boots one kernel; the serial console goes to `log`.
fn boot(vmlinuz: &Path, initramfs: &Path, log: &Path) -> Result<()> {
    let _ = fs::remove_file(log);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "2048"])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        // An oops ends the run at once (the log then lacks the last marker) instead of
        // hanging until the timeout.
        .args([
            "-append",
            "console=ttyS0 quiet loglevel=3 panic=-1 oops=panic rdinit=/init",
        ])
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

/// What the serial log says about one boot.
#[derive(Debug, Default)]
struct GuestRun {
    kernel: Option<String>,
    /// `(program, attach point)` that `reapwatch snapshot --json` reported.
    hooks: Vec<(String, String)>,
    snapshot_error: Option<String>,
    /// Per test executable: exit code (None: never ended), `test result:` line, tests.
    executables: BTreeMap<String, Executable>,
    finished: bool,
}

#[derive(Debug, Default)]
struct Executable {
    exit: Option<i32>,
    result: Option<String>,
    tests: Vec<(String, String)>,
}

impl GuestRun {
    fn parse(log: &str) -> Self {
        let mut run = Self::default();
        let mut current: Option<String> = None;
        for line in log.lines().map(|l| l.trim_end_matches('\r')) {
            if let Some(rest) = line.strip_prefix(MARK).map(str::trim) {
                if let Some(kernel) = rest.strip_prefix("kernel ") {
                    run.kernel = Some(kernel.to_owned());
                } else if let Some(json) = rest.strip_prefix("snapshot ") {
                    run.read_snapshot(json);
                } else if let Some(name) = rest.strip_prefix("begin ") {
                    run.executables.entry(name.to_owned()).or_default();
                    current = Some(name.to_owned());
                } else if let Some(end) = rest.strip_prefix("end ") {
                    if let Some((name, rc)) = end.rsplit_once(" rc=") {
                        run.executables.entry(name.to_owned()).or_default().exit = rc.parse().ok();
                    }
                    current = None;
                } else if rest == "all done" {
                    run.finished = true;
                }
                continue;
            }
            let Some(exe) = current.as_ref().and_then(|c| run.executables.get_mut(c)) else {
                continue;
            };
            if line.starts_with("test result: ") {
                exe.result = Some(line.to_owned());
            } else if let Some(test) = line.strip_prefix("test ") {
                if let Some((name, outcome)) = test.rsplit_once(" ... ") {
                    exe.tests.push((name.to_owned(), outcome.to_owned()));
                }
            }
        }
        run
    }

    fn read_snapshot(&mut self, json: &str) {
        let Ok(report) = serde_json::from_str::<Value>(json) else {
            self.snapshot_error = Some(json.chars().take(300).collect());
            return;
        };
        for hook in report["tracer"]["hooks"].as_array().into_iter().flatten() {
            self.hooks.push((
                hook["program"].as_str().unwrap_or("?").to_owned(),
                hook["attach"].as_str().unwrap_or("?").to_owned(),
            ));
        }
    }

    fn executable_passed(exe: &Executable) -> bool {
        exe.exit == Some(0)
            && exe
                .result
                .as_deref()
                .is_some_and(|r| r.starts_with("test result: ok."))
    }

    fn passed(&self) -> bool {
        self.finished
            && self.snapshot_error.is_none()
            && !self.hooks.is_empty()
            && !self.executables.is_empty()
            && self.executables.values().all(Self::executable_passed)
    }

    fn summary(&self, package: &str, log: &Path) -> String {
        let mut out = format!(
            "\n== {package}: {} (kernel {}, serial log {})\n",
            if self.passed() { "PASS" } else { "FAIL" },
            self.kernel.as_deref().unwrap_or("did not report"),
            log.display()
        );
        if let Some(error) = &self.snapshot_error {
            out.push_str(&format!("   reapwatch snapshot failed: {error}\n"));
        }
        for (program, attach) in &self.hooks {
            out.push_str(&format!("   hook {program:<26} {attach}\n"));
        }
        for (name, exe) in &self.executables {
            out.push_str(&format!(
                "   {name}: {} (exit {})\n",
                exe.result.as_deref().unwrap_or("no test result"),
                exe.exit.map_or("none".to_owned(), |c| c.to_string())
            ));
            for (test, outcome) in &exe.tests {
                out.push_str(&format!("      {outcome:<7} {test}\n"));
            }
        }
        if !self.finished {
            out.push_str("   the guest never reached the end of /init (hang, oops or timeout)\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
[    0.000000] Linux version 6.1.0\r
reapwatch-vm: kernel 6.1.0-56-cloud-amd64\r
reapwatch-vm: snapshot {\"tracer\": {\"hooks\": [{\"program\": \"sched_switch\", \"attach\": \"tp_btf/sched_switch\"}]}}\r
reapwatch-vm: begin storm-0123\r
running 1 test\r
test fork_storm_counts_exactly ... ok\r
\r
test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.1s\r
reapwatch-vm: end storm-0123 rc=0\r
reapwatch-vm: all done\r
";

    #[test]
    fn a_complete_log_passes() {
        let run = GuestRun::parse(LOG);
        assert!(run.passed(), "{run:?}");
        assert_eq!(run.kernel.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(
            run.hooks,
            [("sched_switch".to_owned(), "tp_btf/sched_switch".to_owned())]
        );
        let storm = &run.executables["storm-0123"];
        assert_eq!(
            storm.tests,
            [("fork_storm_counts_exactly".to_owned(), "ok".to_owned())]
        );
    }

    #[test]
    fn a_hung_guest_fails() {
        let cut = &LOG[..LOG.find("reapwatch-vm: end").unwrap()];
        let run = GuestRun::parse(cut);
        assert!(!run.passed());
        assert!(run
            .summary("k", Path::new("l"))
            .contains("never reached the end"));
    }

    #[test]
    fn a_failed_test_fails() {
        let log = LOG
            .replace("test result: ok.", "test result: FAILED.")
            .replace("rc=0", "rc=101");
        assert!(!GuestRun::parse(&log).passed());
        // A non-zero exit alone fails too (e.g. a crash after the summary line).
        assert!(!GuestRun::parse(&LOG.replace("rc=0", "rc=139")).passed());
    }

    #[test]
    fn a_failed_snapshot_fails() {
        let log = LOG.replace(
            "snapshot {\"tracer\": {\"hooks\": [{\"program\": \"sched_switch\", \"attach\": \"tp_btf/sched_switch\"}]}}",
            "snapshot reapwatch: cannot load the eBPF object: invalid argument",
        );
        let run = GuestRun::parse(&log);
        assert!(!run.passed());
        assert!(run.snapshot_error.unwrap().contains("cannot load"));
    }

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut cpio = Cpio::default();
        cpio.parents_of("lib/x86_64-linux-gnu/libc.so.6");
        cpio.file("init", b"#!/bin/sh\n", 0o755);
        let bytes = cpio.finish();
        assert!(bytes.len().is_multiple_of(4));
        assert!(bytes.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&bytes);
        // Parents first, each once, before the file that needs them.
        assert_eq!(text.matches("lib/x86_64-linux-gnu\0").count(), 1);
        assert!(text.find("lib\0").unwrap() < text.find("lib/x86_64-linux-gnu\0").unwrap());
        // 110-byte header + "TRAILER!!!\0" padded to a multiple of 4.
        assert!(text.ends_with("TRAILER!!!\0\0\0\0"));
    }
}
