//! Developer workflows: `cargo xtask setup | build | run | test | image | vm-test | bench`.

mod bench;
mod churn;
mod cross;
mod deploy;
mod field;
mod image;
mod process;
mod record;
mod setup;
mod vm;

use std::{
    os::unix::process::CommandExt,
    process::{Command, ExitCode},
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use process::{cargo, workspace_root};

#[derive(Parser)]
#[command(about = "reapwatch developer workflows")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent; fast when all is present).
    Setup,
    /// Set up, then build the release binary (eBPF object embedded).
    Build,
    /// Set up, build, and run reapwatch with the given arguments.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every check CI runs: fmt, clippy (host and bpf), all tests, vm-test.
    Test,
    /// Set up, then build the static binary and the container image (FROM scratch, buildah).
    Image {
        /// Then run the image's end-to-end test under podman, as `cargo xtask test` does.
        #[arg(long)]
        test: bool,
    },
    /// The offline checks of the Helm chart that `test` runs: every documented combination
    /// rendered and linted by Helm's engine, schemas, least privilege, the values schema's
    /// refusals, kube-prometheus-stack's selectors, rules and their unit tests, dashboard,
    /// metric contract, and deploy/reapwatch.yaml against the chart.
    DeployCheck,
    /// Write deploy/reapwatch.yaml (the chart's defaults, for clusters without Helm).
    DeployRender,
    /// Run the end-to-end suite in qemu on each kernel and cgroup layout of the matrix
    /// (5.10 with cgroup v1, 6.1 with cgroup v2, 6.12 hybrid).
    VmTest {
        /// Only the machines whose name contains this (e.g. `5.10`, `cgroup-v2`).
        #[arg(long)]
        only: Option<String>,
        /// Run the smoke set where a machine has one, as `cargo xtask test` does.
        #[arg(long)]
        smoke: bool,
        /// Only these test executables (comma-separated target names, e.g. `walk,storm`).
        #[arg(long, value_delimiter = ',')]
        tests: Vec<String>,
    },
    /// Measure the tracer's overhead on a fork storm and a pipe ping-pong, and its memory.
    Bench {
        /// Interleaved off/on pairs for reapwatch.
        #[arg(long, default_value_t = 40)]
        pairs: usize,
        /// Pairs for each comparison tracer (bpftrace, exitsnoop); 0 skips them.
        #[arg(long, default_value_t = 8)]
        compare_pairs: usize,
        /// Instead: the memory of serve, top and trace while this many cgroups, each with a
        /// zombie, are made and removed.
        #[arg(long, value_name = "CGROUPS")]
        churn: Option<u64>,
    },
    /// `reapwatch serve` on a node in trouble: probe latency during full reconciles of many
    /// processes, and more zombies than the kernel maps hold.
    BenchField {
        /// Sleeping processes for the probe-latency run.
        #[arg(long, default_value_t = 30_000)]
        sleepers: usize,
        /// Zombies beside them.
        #[arg(long, default_value_t = 5_000)]
        zombies: usize,
        /// Zombies for the overflow run (0 skips it).
        #[arg(long, default_value_t = 100_000)]
        overflow_zombies: usize,
    },
    /// Record, from a live `reapwatch serve`, the pods' pids series the alert tests replay
    /// (tests/deploy/alerts.test.yaml): a leak under a pod's limit, one scrape a second.
    RecordAlertSeries {
        /// Scrapes, one a second.
        #[arg(long, default_value_t = 75)]
        samples: usize,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Setup => setup::all(),
        Task::Build => {
            setup::all()?;
            build_release()
        }
        Task::Run { args } => {
            setup::all()?;
            build_release()?;
            let binary = workspace_root().join("target/release/reapwatch");
            Err(Command::new(&binary).args(args).exec()).context("cannot start reapwatch")
        }
        Task::Test => {
            setup::all()?;
            test()?;
            vm::run(None, true, &[])
        }
        Task::VmTest { only, smoke, tests } => {
            setup::all()?;
            vm::run(only.as_deref(), smoke, &tests)
        }
        Task::Bench {
            pairs,
            compare_pairs,
            churn,
        } => {
            setup::all()?;
            match churn {
                Some(cgroups) => churn::run(cgroups),
                None => bench::run(pairs, compare_pairs),
            }
        }
        Task::BenchField {
            sleepers,
            zombies,
            overflow_zombies,
        } => {
            setup::all()?;
            field::run(sleepers, zombies, overflow_zombies)
        }
        Task::RecordAlertSeries { samples } => {
            setup::all()?;
            record::run(samples)
        }
        Task::DeployCheck => {
            setup::all()?;
            deploy::check()
        }
        Task::DeployRender => {
            setup::all()?;
            deploy::render_plain_manifests()
        }
        Task::Image { test } => {
            setup::all()?;
            let image = image::build()?;
            if test {
                image::test(&image)
            } else {
                Ok(())
            }
        }
    }
}

fn build_release() -> Result<()> {
    cargo(None, &["build", "--release", "--package", "reapwatch"])
}

fn test() -> Result<()> {
    cargo(None, &["fmt", "--all", "--check"])?;
    cargo(
        None,
        &[
            "clippy",
            "--workspace",
            "--exclude",
            "tracer-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The kernel programs only compile for the bpf target.
    cargo(
        Some(&setup::ebpf_toolchain()?),
        &[
            "clippy",
            "--package",
            "tracer-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // End-to-end tests run the workspace's binaries, which `cargo test` does not build for
    // other packages.
    cargo(
        None,
        &["build", "--workspace", "--exclude", "tracer-ebpf", "--bins"],
    )?;
    cargo(None, &["test", "--workspace", "--exclude", "tracer-ebpf"])?;
    deploy::check()?;
    image::test(&image::build()?)
}
