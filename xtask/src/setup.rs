//! Installs the toolchain pieces a fresh Debian/Ubuntu machine lacks. Every step checks
//! first, so a second run costs a few process spawns.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::process;

/// Debian packages: LLVM 22 to build bpf-linker against (rustc's LLVM major), and the real
/// components the tests drive.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "util-linux",
    // A real Prometheus scrapes the exporter in the tests; promtool checks deploy/. The schema
    // validators' venv, and buildah/podman for the image (runc: crun refuses hybrid cgroups).
    "prometheus",
    "python3-venv",
    "buildah",
    "podman",
    "runc",
    // The TLS tests make their certificates with openssl and talk to the endpoint with curl
    // (client certificates, basic auth).
    "openssl",
    "curl",
    // The static musl build (the image, the VMs) compiles ring's C and assembly (rustls'
    // crypto) with x86_64-linux-musl-gcc.
    "musl-tools",
    // `reapwatch top` is driven in a real terminal in the tests.
    "tmux",
    // vm-test's emulator and guest shell; the other tracers the tests and the benchmark
    // run beside reapwatch.
    "qemu-system-x86",
    "busybox-static",
    "bpftrace",
    "libbpf-tools",
    // The static aarch64 build (the arm64 image): Debian has no aarch64 musl gcc, so its
    // glibc cross gcc compiles ring's C (with the cross libc's headers) and links, as
    // .cargo/config.toml says; qemu-system-aarch64 for the arm64 VM.
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-system-arm",
    // The BTF test checks the offsets reapwatch reads from the kernel's BTF against
    // bpftool's (libbpf's) reading of it.
    "bpftool",
    // vm-test finds the libraries a guest's programs need with readelf, for any architecture.
    "binutils",
    // libseccomp's scmp_sys_resolver: the seccomp profile's names on each architecture.
    "seccomp",
];

pub const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM bpf-linker is built against (Debian's llvm-N-dev): the pinned rustc's major.
const BPF_LINKER_LLVM: u32 = 22;
/// What the eBPF build and its clippy need of the pinned nightly.
const EBPF_COMPONENTS: [&str; 2] = ["rust-src", "clippy"];

pub fn all() -> Result<()> {
    debian_packages()?;
    let toolchain = ebpf_toolchain()?;
    pinned_nightly(&toolchain)?;
    bpf_linker(&toolchain)?;
    crate::deploy::setup()?;
    tracefs()
}

/// A query whose failure means "not there": its stdout, or None.
fn query(program: &str, args: &[&str]) -> Option<String> {
    process::output(Command::new(program).args(args)).ok()
}

fn run(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    process::run(Command::new(program).args(args).envs(envs.iter().copied()))
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            !query("dpkg-query", &["-W", "-f=${Status}", pkg])
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let noninteractive = [("DEBIAN_FRONTEND", "noninteractive")];
    run("apt-get", &["update", "-qq"], &noninteractive)?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    run("apt-get", &args, &noninteractive)
}

/// The eBPF crate's pinned nightly, from `tracer-ebpf/rust-toolchain.toml`: the build
/// script, clippy and setup all use this one and never the moving `nightly`.
pub fn ebpf_toolchain() -> Result<String> {
    let file = process::workspace_root().join("tracer-ebpf/rust-toolchain.toml");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    channel_of(&text).with_context(|| format!("{} names no toolchain.channel", file.display()))
}

fn channel_of(toolchain_file: &str) -> Option<String> {
    let table = toolchain_file.parse::<toml::Table>().ok()?;
    Some(table.get("toolchain")?.get("channel")?.as_str()?.to_owned())
}

fn pinned_nightly(toolchain: &str) -> Result<()> {
    if query("rustup", &["run", toolchain, "rustc", "--version"]).is_some() {
        let installed = query(
            "rustup",
            &["component", "list", "--toolchain", toolchain, "--installed"],
        )
        .unwrap_or_default();
        if EBPF_COMPONENTS
            .iter()
            .all(|c| installed.lines().any(|l| l.starts_with(c)))
        {
            return Ok(());
        }
    }
    let mut args = vec!["toolchain", "install", toolchain, "--profile", "minimal"];
    for component in EBPF_COMPONENTS {
        args.extend(["--component", component]);
    }
    run("rustup", &args, &[])
}

/// The LLVM major in `rustc -vV` ("LLVM version: 22.1.4") or in LLVM's own `--version`
/// ("LLVM version 22.1.8").
fn llvm_major(version_text: &str) -> Option<u32> {
    let rest = version_text.split("LLVM version").nth(1)?;
    let rest = rest.trim_start_matches(':').trim_start();
    rest.split('.').next()?.parse().ok()
}

/// The LLVM major `bpf-linker` was built against, asked of LLVM itself.
fn bpf_linker_llvm() -> Option<u32> {
    let scratch = std::env::temp_dir().join("reapwatch-bpf-linker-version.o");
    let out = process::capture(
        Command::new("bpf-linker")
            .arg("--llvm-args=--version")
            .arg("-o")
            .arg(&scratch)
            .arg("/dev/null"),
    )
    .ok()?;
    llvm_major(&String::from_utf8_lossy(&out.stdout))
}

fn bpf_linker(toolchain: &str) -> Result<()> {
    let rustc = query("rustup", &["run", toolchain, "rustc", "-vV"])
        .with_context(|| format!("cannot run rustc of {toolchain}"))?;
    let rustc_llvm = llvm_major(&rustc)
        .with_context(|| format!("rustc of {toolchain} does not say its LLVM version"))?;
    if rustc_llvm != BPF_LINKER_LLVM {
        bail!(
            "{toolchain} uses LLVM {rustc_llvm} but bpf-linker is built against LLVM \
             {BPF_LINKER_LLVM}: pin a nightly with LLVM {BPF_LINKER_LLVM} in \
             tracer-ebpf/rust-toolchain.toml, or raise BPF_LINKER_LLVM in xtask/src/setup.rs"
        );
    }
    let installed = query("bpf-linker", &["--version"])
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
        .then(bpf_linker_llvm)
        .flatten();
    if installed == Some(rustc_llvm) {
        return Ok(());
    }
    let spec = format!("bpf-linker@{BPF_LINKER_VERSION}");
    let feature = format!("llvm-{BPF_LINKER_LLVM}");
    let prefix = format!("/usr/lib/llvm-{BPF_LINKER_LLVM}");
    run(
        env!("CARGO"),
        &[
            "install",
            &spec,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &feature,
        ],
        // /usr/bin/llvm-config may be an older LLVM.
        &[("LLVM_PREFIX", &prefix)],
    )?;
    match bpf_linker_llvm() {
        Some(major) if major == rustc_llvm => Ok(()),
        other => bail!(
            "bpf-linker was built but reports LLVM {}, not {rustc_llvm} (is another bpf-linker \
             earlier in PATH?)",
            other.map_or("unknown".to_owned(), |m| m.to_string())
        ),
    }
}

/// reapwatch itself attaches by BTF and needs no tracefs; the tests that run other tracers
/// beside it (bpftrace, exitsnoop) do.
fn tracefs() -> Result<()> {
    let tracing = Path::new("/sys/kernel/tracing");
    if tracing.join("events").exists() {
        return Ok(());
    }
    run(
        "mount",
        &["-t", "tracefs", "nodev", "/sys/kernel/tracing"],
        &[],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_channel_is_a_dated_nightly() {
        let channel = ebpf_toolchain().unwrap();
        let date = channel.strip_prefix("nightly-").expect("a nightly");
        assert_eq!(date.len(), "2026-05-20".len(), "{channel} is not dated");
        assert_eq!(channel_of("[toolchain]\nprofile = \"minimal\"\n"), None);
    }

    #[test]
    fn llvm_majors_are_read_from_rustc_and_from_llvm() {
        let rustc = "release: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(rustc), Some(22));
        let llvm = "Debian LLVM version 23.1.0\n  Optimized build.\n";
        assert_eq!(llvm_major(llvm), Some(23));
        assert_eq!(llvm_major("bpf-linker 0.13.0"), None);
    }
}
