//! Installs the toolchain pieces a fresh Debian/Ubuntu machine lacks. Every step checks
//! first, so a second run costs a few process spawns.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

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
];

pub const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn all() -> Result<()> {
    debian_packages()?;
    nightly_with_rust_src()?;
    bpf_linker()?;
    crate::deploy::setup()?;
    tracefs()
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    eprintln!("xtask: {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .status()
        .with_context(|| format!("cannot run {program}"))?;
    if !status.success() {
        bail!("{program} {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            !output("dpkg-query", &["-W", "-f=${Status}", pkg])
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

fn nightly_with_rust_src() -> Result<()> {
    let toolchains = output("rustup", &["toolchain", "list"]).context("rustup is required")?;
    if !toolchains.lines().any(|t| t.starts_with("nightly")) {
        run(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
            &[],
        )?;
    }
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    for component in ["rust-src", "clippy", "rustfmt"] {
        if !installed.lines().any(|c| c.starts_with(component)) {
            run(
                "rustup",
                &["component", "add", component, "--toolchain", "nightly"],
                &[],
            )?;
        }
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    if output("bpf-linker", &["--version"]).is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    let spec = format!("bpf-linker@{BPF_LINKER_VERSION}");
    run(
        env!("CARGO"),
        &[
            "install",
            &spec,
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
        ],
        // /usr/bin/llvm-config may be an older LLVM.
        &[("LLVM_PREFIX", "/usr/lib/llvm-22")],
    )
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
