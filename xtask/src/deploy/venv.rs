//! The Python environments of the checks, each made from pinned requirements: the schema
//! validators and Helm's engine (`target/deploy-venv`), and the Datadog Agent's check code for
//! the Datadog end-to-end tests (`target/datadog-venv`).

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context, Result};

use super::read;
use crate::process::{self, workspace_root};

/// A virtual environment under `target/` and the requirements file that pins it.
struct Venv {
    dir: &'static str,
    requirements: &'static str,
}

const DEPLOY: Venv = Venv {
    dir: "target/deploy-venv",
    requirements: "tests/deploy/requirements.txt",
};

const DATADOG: Venv = Venv {
    dir: "target/datadog-venv",
    requirements: "tests/datadog/requirements.txt",
};

impl Venv {
    fn path(&self) -> PathBuf {
        workspace_root().join(self.dir)
    }

    /// Creates the environment; a stamp of the requirements makes a second run free.
    fn setup(&self) -> Result<()> {
        let requirements = workspace_root().join(self.requirements);
        let wanted = read(&requirements)?;
        let stamp = self.path().join("requirements.stamp");
        if fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
            return Ok(());
        }
        process::run(
            Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(self.path()),
        )?;
        let pip = || Command::new(self.path().join("bin/pip"));
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
}

/// A program the deploy requirements installed.
pub(super) fn program(name: &str) -> PathBuf {
    DEPLOY.path().join("bin").join(name)
}

/// Creates both environments.
pub fn setup() -> Result<()> {
    DEPLOY.setup()?;
    DATADOG.setup()
}
