//! One module per subcommand.

pub mod scan;
pub mod snapshot;
pub mod top;
pub mod trace;
pub mod why;

use std::{
    io::{self, Write},
    time::Duration,
};

use crate::state::StateEngine;

/// How often `top` and `trace` drop what they hold for cgroups that were removed.
pub const FORGET_REMOVED_EVERY: Duration = Duration::from_secs(10);

/// Forgets the counters of removed cgroups, in the kernel and in the state engine. `top` and
/// `trace` never read them, and nothing else would remove them: one entry per cgroup that
/// ever forked would pile up until the kernel map is full. A cgroup too new for the last
/// walk of the hierarchy looks removed too; its counters restart, which they do not show.
pub fn forget_removed_cgroups(engine: &mut StateEngine) -> anyhow::Result<()> {
    for cgroup in engine.cgroups()? {
        if cgroup.path.is_none() {
            engine.forget_cgroup(cgroup.id)?;
        }
    }
    Ok(())
}

/// Writes to stdout at once. A reader that went away is `main`'s to forgive.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
