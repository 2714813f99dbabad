//! Where a guest's programs that are not ours come from: the host itself when the guest runs
//! the host's architecture, else Debian's packages of the guest's architecture unpacked into a
//! directory. Either way a program comes with the loader and libraries it names (read with
//! `readelf`, which reads any architecture's ELF).

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use super::debian::{self, Apt};
use crate::{cross::Arch, process};

/// The packages of a foreign guest: busybox, the programs the tests run (see
/// `super::GUEST_PROGRAMS`) and their libraries, terminal descriptions and the C.UTF-8 locale.
const FOREIGN_PACKAGES: &[&str] = &[
    "busybox-static",
    "util-linux",
    "bpftool",
    "bash",
    "prometheus",
    "tmux",
    "openssl",
    "curl",
    "ncurses-base",
    "libc-bin",
    "libc6",
    "libbrotli1",
    "libcap2",
    "libcap-ng0",
    "libcom-err2",
    "libcurl4",
    "libelf1",
    "libevent-core-2.1-7",
    "libffi8",
    "libgmp10",
    "libgnutls30",
    "libgssapi-krb5-2",
    "libhogweed6",
    "libidn2-0",
    "libk5crypto3",
    "libkeyutils1",
    "libkrb5-3",
    "libkrb5support0",
    "libldap-2.5-0",
    "libnettle8",
    "libnghttp2-14",
    "libp11-kit0",
    "libpsl5",
    "librtmp1",
    "libsasl2-2",
    "libssh2-1",
    "libssl3",
    "libtasn1-6",
    "libtinfo6",
    "libunistring2",
    "libutempter0",
    "libzstd1",
    "zlib1g",
];

pub struct GuestRoot {
    dir: PathBuf,
    /// Debian's multiarch directory name: `x86_64-linux-gnu`.
    triplet: &'static str,
}

impl GuestRoot {
    /// The files of a guest of `arch`: the host's own, or packages unpacked once into `cache`.
    pub fn of(arch: Arch, cache: &Path) -> Result<Self> {
        let triplet = match arch {
            Arch::Amd64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
        };
        if arch == Arch::host()? {
            return Ok(Self {
                dir: PathBuf::from("/"),
                triplet,
            });
        }
        let dir = cache.join(format!("root-{}", arch.oci_name()));
        let complete = dir.join(".unpacked");
        if !complete.exists() {
            let debs = cache.join(format!("debs-{}", arch.oci_name()));
            let _ = fs::remove_dir_all(&debs);
            fs::create_dir_all(&debs)?;
            Apt::new(cache, arch)?.download(&debs, FOREIGN_PACKAGES)?;
            for deb in fs::read_dir(&debs)? {
                debian::unpack(&deb?.path(), &dir, None)?;
            }
            fs::write(&complete, "")?;
        }
        Ok(Self { dir, triplet })
    }

    /// `guest_path` (relative, as in the guest) on this machine. An absolute symbolic link
    /// among unpacked packages points into the guest's root, not the host's.
    pub fn path(&self, guest_path: &str) -> PathBuf {
        let mut path = self.dir.join(guest_path);
        for _ in 0..8 {
            match fs::read_link(&path) {
                Ok(target) if target.is_absolute() => {
                    path = self.dir.join(target.strip_prefix("/").unwrap_or(&target));
                }
                _ => break,
            }
        }
        path
    }

    pub fn read(&self, guest_path: &str) -> Result<Vec<u8>> {
        let path = self.path(guest_path);
        fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
    }

    /// `program` and every file it needs to run: its ELF interpreter and the libraries it
    /// names, and those they name; as guest paths.
    pub fn with_libraries(&self, program: &str) -> Result<Vec<String>> {
        let mut files = vec![program.to_owned()];
        let mut seen = BTreeSet::new();
        let mut next = 0;
        while let Some(file) = files.get(next).cloned() {
            next += 1;
            let (interpreter, needed) = self.dynamic_section(&file)?;
            for library in interpreter.into_iter().chain(
                needed
                    .iter()
                    .map(|soname| self.find_library(soname, &file))
                    .collect::<Result<Vec<_>>>()?,
            ) {
                if seen.insert(library.clone()) {
                    files.push(library);
                }
            }
        }
        Ok(files)
    }

    /// The ELF interpreter (as a guest path) and the sonames `file` needs.
    fn dynamic_section(&self, file: &str) -> Result<(Option<String>, Vec<String>)> {
        let out = process::output(
            Command::new("readelf")
                .args(["-d", "-l", "-W"])
                .arg(self.path(file)),
        )?;
        let mut interpreter = None;
        let mut needed = Vec::new();
        for line in out.lines() {
            if let Some(rest) = line.split("Requesting program interpreter: ").nth(1) {
                interpreter = Some(
                    rest.trim_end_matches(']')
                        .trim_start_matches('/')
                        .to_owned(),
                );
            } else if line.contains("(NEEDED)") {
                if let Some(soname) = line.split('[').nth(1) {
                    needed.push(soname.trim_end_matches(']').to_owned());
                }
            }
        }
        Ok((interpreter, needed))
    }

    fn find_library(&self, soname: &str, wanted_by: &str) -> Result<String> {
        let triplet = self.triplet;
        for dir in [
            format!("lib/{triplet}"),
            format!("usr/lib/{triplet}"),
            "lib".to_owned(),
            "usr/lib".to_owned(),
        ] {
            let candidate = format!("{dir}/{soname}");
            if self.path(&candidate).exists() {
                return Ok(candidate);
            }
        }
        bail!(
            "{soname}, which {wanted_by} needs, is not under {} (a package missing from the list?)",
            self.dir.display()
        )
    }
}
