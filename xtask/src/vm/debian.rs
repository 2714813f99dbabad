//! Debian packages for the guests: the pinned kernels, and for a guest of another architecture
//! than the host's, the programs the tests run there.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{cross::Arch, process};

/// apt for one architecture. The host's own uses the machine's package lists; another gets a
/// private state under the cache (its own lists, no dpkg database), so the machine's dpkg
/// architectures stay as they are.
pub struct Apt {
    private_state: Option<PathBuf>,
    arch: Arch,
}

impl Apt {
    pub fn new(cache: &Path, arch: Arch) -> Result<Self> {
        let private_state = if arch == Arch::host()? {
            None
        } else {
            let state = cache.join(format!("apt-{}", arch.oci_name()));
            for dir in ["lists/partial", "cache/archives/partial"] {
                fs::create_dir_all(state.join(dir))
                    .with_context(|| format!("cannot create {}", state.display()))?;
            }
            Some(state)
        };
        Ok(Self {
            private_state,
            arch,
        })
    }

    fn apt_get(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("apt-get");
        if let Some(state) = &self.private_state {
            let arch = self.arch.oci_name();
            for option in [
                format!("APT::Architecture={arch}"),
                format!("APT::Architectures::={arch}"),
                format!("Dir::State::Lists={}", state.join("lists").display()),
                format!("Dir::Cache={}", state.join("cache").display()),
                "Dir::State::status=/dev/null".to_owned(),
                "APT::Sandbox::User=root".to_owned(),
            ] {
                cmd.args(["-o", &option]);
            }
        }
        cmd.args(args);
        cmd
    }

    /// Downloads `packages` (`NAME` or `NAME=VERSION`) into `dir`, reading the package lists
    /// first where there are none yet or they no longer name a pinned version.
    pub fn download(&self, dir: &Path, packages: &[&str]) -> Result<()> {
        let mut args = vec!["download", "-qq"];
        args.extend(packages);
        let download =
            || process::succeeds(self.apt_get(&args).current_dir(dir).stdout(Stdio::null()));
        if !download()? {
            process::run(&mut self.apt_get(&["update", "-qq"]))?;
            if !download()? {
                bail!(
                    "apt-get download {} for {} failed (is a pinned version still in the archive?)",
                    packages.join(" "),
                    self.arch.oci_name()
                );
            }
        }
        Ok(())
    }
}

/// Unpacks `deb`'s files (all, or only those matching `only`) under `into`.
pub fn unpack(deb: &Path, into: &Path, only: Option<&str>) -> Result<()> {
    fs::create_dir_all(into).with_context(|| format!("cannot create {}", into.display()))?;
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run dpkg-deb")?;
    let mut tar = Command::new("tar");
    tar.args(["-x", "-f", "-", "-C"]).arg(into);
    if let Some(pattern) = only {
        tar.args(["--wildcards", pattern]);
    }
    let tar = tar
        .stdin(dpkg.stdout.take().context("dpkg-deb stdout")?)
        .status()
        .context("cannot run tar")?;
    if !dpkg.wait()?.success() || !tar.success() {
        bail!("cannot unpack {}", deb.display());
    }
    Ok(())
}

/// Downloads `url` to `deb`, checked against the SHA-256 its suite's signed `Packages` index
/// gives: for a suite the machine does not list.
pub fn download_checked(url: &str, sha256: &str, deb: &Path) -> Result<()> {
    let partial = deb.with_extension("partial");
    process::run(
        Command::new("curl")
            .args(["-fsSL", "--retry", "3", "-o"])
            .arg(&partial)
            .arg(url),
    )?;
    let got = process::output(Command::new("sha256sum").arg(&partial))?;
    if got.split_whitespace().next() != Some(sha256) {
        let _ = fs::remove_file(&partial);
        bail!("{url}: SHA-256 is not the pinned {sha256}");
    }
    fs::rename(&partial, deb).with_context(|| format!("cannot write {}", deb.display()))
}
