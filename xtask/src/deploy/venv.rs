//! The Python environment of the schema validators, made from pinned requirements.

use std::{fs, path::PathBuf};

use anyhow::{Context, Result};

use super::{read, run};
use crate::workspace_root;

fn venv() -> PathBuf {
    workspace_root().join("target/deploy-venv")
}

/// A program the requirements installed.
pub(super) fn program(name: &str) -> PathBuf {
    venv().join("bin").join(name)
}

/// Creates the environment; a stamp of the requirements makes a second run free.
pub fn setup() -> Result<()> {
    let requirements = workspace_root().join("tests/deploy/requirements.txt");
    let wanted = read(&requirements)?;
    let stamp = venv().join("requirements.stamp");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
    let venv = venv();
    let venv = venv.to_str().context("workspace path is not UTF-8")?;
    run("python3", &["-m", "venv", "--clear", venv])?;
    let pip = format!("{venv}/bin/pip");
    let requirements = requirements
        .to_str()
        .context("workspace path is not UTF-8")?;
    run(
        &pip,
        &[
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "-r",
            requirements,
        ],
    )?;
    // --no-deps installs exactly the pins; this fails if one is missing.
    run(&pip, &["check"])?;
    fs::write(stamp, wanted).context("cannot write the venv stamp")
}
