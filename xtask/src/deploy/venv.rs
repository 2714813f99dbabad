//! The Python environment of the schema validators, made from pinned requirements.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context, Result};

use super::read;
use crate::{process, workspace_root};

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
    process::run(
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(venv()),
    )?;
    let pip = || Command::new(program("pip"));
    process::run(
        pip()
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "-r",
            ])
            .arg(requirements),
    )?;
    // --no-deps installs exactly the pins; this fails if one is missing.
    process::run(pip().arg("check"))?;
    fs::write(stamp, wanted).context("cannot write the venv stamp")
}
