//! The `newc` cpio format the kernel unpacks as its initramfs.

use std::{collections::BTreeSet, fs, path::Path};

use anyhow::{Context, Result};

/// A `newc` cpio archive, the format the kernel unpacks as initramfs.
#[derive(Default)]
pub struct Cpio {
    bytes: Vec<u8>,
    inode: u32,
    dirs: Vec<String>,
    files: BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.inode += 1;
        let fields = [
            self.inode,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        if !self.dirs.iter().any(|d| d == name) {
            self.dirs.push(name.to_owned());
            self.entry(name, 0o040755, (0, 0), &[]);
        }
    }

    pub fn parents_of(&mut self, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.dir(&prefix.clone());
        }
    }

    /// A regular file; a second file of the same name (a library two tools share) is left
    /// out.
    pub fn file(&mut self, name: &str, data: &[u8], perm: u32) {
        if self.files.insert(name.to_owned()) {
            self.entry(name, 0o100000 | perm, (0, 0), data);
        }
    }

    /// The directory `source` and everything under it, as `name`; symbolic links are
    /// followed. A missing directory adds nothing.
    pub fn tree(&mut self, source: &Path, name: &str) -> Result<()> {
        let Ok(entries) = fs::read_dir(source) else {
            return Ok(());
        };
        self.parents_of(name);
        self.dir(name);
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let child = format!("{name}/{}", entry.file_name().to_string_lossy());
            if path.is_dir() {
                self.tree(&path, &child)?;
            } else {
                let data =
                    fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
                self.file(&child, &data, 0o644);
            }
        }
        Ok(())
    }

    pub fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut cpio = Cpio::default();
        cpio.parents_of("lib/x86_64-linux-gnu/libc.so.6");
        cpio.file("init", b"#!/bin/sh\n", 0o755);
        let bytes = cpio.finish();
        assert!(bytes.len().is_multiple_of(4));
        assert!(bytes.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&bytes);
        // Parents first, each once, before the file that needs them.
        assert_eq!(text.matches("lib/x86_64-linux-gnu\0").count(), 1);
        assert!(text.find("lib\0").unwrap() < text.find("lib/x86_64-linux-gnu\0").unwrap());
        // 110-byte header + "TRAILER!!!\0" padded to a multiple of 4.
        assert!(text.ends_with("TRAILER!!!\0\0\0\0"));
    }
}
