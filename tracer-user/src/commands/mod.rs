//! One module per subcommand.

pub mod scan;
pub mod snapshot;
pub mod top;
pub mod trace;
pub mod why;

use std::io::{self, Write};

/// Writes to stdout; a reader that went away (`reapwatch ... | head`) is not an error.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => Err(err.into()),
        _ => Ok(()),
    }
}
