//! Static reapwatch builds for each architecture it ships on. musl links statically without
//! glibc's NSS and dlopen caveats, so one binary runs in an image FROM scratch and in a bare
//! initramfs. The aarch64 linker and C compiler are set in `.cargo/config.toml`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context, Result};

use crate::process::{self, workspace_root};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// The architecture of the machine running xtask.
    pub fn host() -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|arch| arch.rust_target().starts_with(std::env::consts::ARCH))
            .with_context(|| format!("no static build for {}", std::env::consts::ARCH))
    }

    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-musl",
            Arch::Arm64 => "aarch64-unknown-linux-musl",
        }
    }

    /// The name OCI image configs and manifest lists give the architecture.
    pub fn oci_name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// `e_machine` of the ELF header: EM_X86_64, EM_AARCH64.
    fn elf_machine(self) -> u16 {
        match self {
            Arch::Amd64 => 62,
            Arch::Arm64 => 183,
        }
    }

    /// Adds the Rust standard library for this target unless rustup has it.
    pub fn install_target(self) -> Result<()> {
        let target = self.rust_target();
        let installed =
            process::output(Command::new("rustup").args(["target", "list", "--installed"]))?;
        if installed.lines().any(|t| t == target) {
            return Ok(());
        }
        process::run(Command::new("rustup").args(["target", "add", target]))
    }

    /// Builds reapwatch for this architecture, checks it is static, and returns its path.
    pub fn static_reapwatch(self) -> Result<PathBuf> {
        self.install_target()?;
        let target = self.rust_target();
        process::cargo(
            None,
            &[
                "build",
                "--release",
                "--locked",
                "--package",
                "reapwatch",
                "--target",
                target,
            ],
        )?;
        let binary = workspace_root()
            .join("target")
            .join(target)
            .join("release/reapwatch");
        self.ensure_static(&binary)?;
        Ok(binary)
    }

    /// Checks that `binary` is an executable for this architecture that needs no loader or
    /// libc: no ELF interpreter.
    pub fn ensure_static(self, binary: &Path) -> Result<()> {
        let elf = fs::read(binary).with_context(|| format!("read {}", binary.display()))?;
        self.check_static_elf(&elf)
            .with_context(|| format!("{} is not a static {self:?} build", binary.display()))
    }

    fn check_static_elf(self, elf: &[u8]) -> Result<()> {
        const PT_INTERP: u32 = 3;
        let bytes = |offset: usize, len: usize| {
            elf.get(offset..offset + len)
                .context("truncated ELF header")
        };
        ensure!(
            bytes(0, 6)? == b"\x7fELF\x02\x01",
            "not a 64-bit little-endian ELF"
        );
        let u16_at = |o| Ok::<_, anyhow::Error>(u16::from_le_bytes(bytes(o, 2)?.try_into()?));
        let machine = u16_at(0x12)?;
        ensure!(
            machine == self.elf_machine(),
            "ELF machine {machine}, not {} ({self:?})",
            self.elf_machine()
        );
        let phoff = u64::from_le_bytes(bytes(0x20, 8)?.try_into()?) as usize;
        let (phentsize, phnum) = (u16_at(0x36)? as usize, u16_at(0x38)? as usize);
        for i in 0..phnum {
            let p_type = u32::from_le_bytes(bytes(phoff + i * phentsize, 4)?.try_into()?);
            ensure!(
                p_type != PT_INTERP,
                "dynamically linked: it names an ELF interpreter"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit little-endian ELF header for `machine` with one program header of `p_type`.
    fn elf(machine: u16, p_type: u32) -> Vec<u8> {
        let mut elf = vec![0; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&p_type.to_le_bytes());
        elf
    }

    #[test]
    fn a_static_binary_of_the_architecture_passes() {
        const PT_LOAD: u32 = 1;
        Arch::Amd64.check_static_elf(&elf(62, PT_LOAD)).unwrap();
        Arch::Arm64.check_static_elf(&elf(183, PT_LOAD)).unwrap();
    }

    #[test]
    fn another_architecture_or_a_loader_fails() {
        let err = Arch::Arm64.check_static_elf(&elf(62, 1)).unwrap_err();
        assert!(err.to_string().contains("ELF machine 62"), "{err}");
        let err = Arch::Amd64.check_static_elf(&elf(62, 3)).unwrap_err();
        assert!(err.to_string().contains("interpreter"), "{err}");
        assert!(Arch::Amd64.check_static_elf(b"\x7fELF").is_err());
    }

    #[test]
    fn the_host_has_a_static_build() {
        assert!(Arch::host().is_ok());
    }
}
