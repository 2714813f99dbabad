//! reapwatch: finds processes that exited and were never reaped, with eBPF.
//!
//! The kernel programs (`tracer-ebpf`) keep the zombies and counters; [`kernel`] loads them,
//! [`state`] reconciles them with `/proc` and groups them per parent, [`cgroup`] attributes
//! processes to containers, [`kubelet`] reads the kubelet's PID eviction settings, [`watch`]
//! is the refresh loop `top` and `serve` share, and [`commands`] renders what a person or a
//! script asks for.

pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod escape;
pub mod exporter;
pub mod forecast;
pub mod kernel;
pub mod kubelet;
pub mod kubernetes;
pub mod procfs;
pub mod state;
pub mod text;
pub mod watch;

use anyhow::Result;

pub fn run(cli: cli::Cli) -> Result<()> {
    match cli.command {
        cli::Command::Snapshot(args) => commands::snapshot::run(&args),
        cli::Command::Serve(args) => exporter::run(&args),
        cli::Command::Trace(args) => commands::trace::run(&args),
        cli::Command::Scan(args) => commands::scan::run(&args),
        cli::Command::Why(args) => commands::why::run(&args),
        cli::Command::Top(args) => commands::top::run(&args),
    }
}
