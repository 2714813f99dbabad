//! Command-line interface.

use clap::{Args, Parser, Subcommand};

use crate::kernel::MapSizes;

#[derive(Debug, Parser)]
#[command(
    name = "reapwatch",
    version,
    about = "Finds processes that exited and were never reaped (zombies), per parent and container"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the tracer, reconcile with /proc, print every parent with unreaped children, exit.
    Snapshot(SnapshotArgs),
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Print one JSON object (the stable contract for scripts; see README) instead of a table.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub maps: MapArgs,
}

/// Kernel map capacities. When a map is full, what does not fit is counted as lost.
#[derive(Debug, Args)]
pub struct MapArgs {
    /// Unreaped zombies tracked at once, node-wide.
    #[arg(long, default_value_t = MapSizes::default().zombies, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_zombies: u32,

    /// cgroups with fork/exit/zombie counters.
    #[arg(long, default_value_t = MapSizes::default().cgroups, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_cgroups: u32,

    /// Processes whose last wait() is remembered.
    #[arg(long, default_value_t = MapSizes::default().waits, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_waits: u32,
}

impl MapArgs {
    pub fn sizes(&self) -> MapSizes {
        MapSizes {
            zombies: self.max_zombies,
            cgroups: self.max_cgroups,
            waits: self.max_waits,
        }
    }
}
