//! Running programs to completion, xtask's one way to: each says what it runs or stays quiet
//! by choice, and a failure names the command, its exit status and any output it captured.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use anyhow::{bail, Context, Result};

/// The command as a shell would show it, for logs and errors.
pub fn line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|word| word.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` on the terminal's stdio, its line logged first; a non-zero exit is an error.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {}", line(cmd));
    let status = cmd.status().with_context(|| cannot_start(cmd))?;
    if !status.success() {
        bail!("{} failed ({status})", line(cmd));
    }
    Ok(())
}

/// Runs `cmd` without a log line (a query, or one check of many) and returns its stdout; a
/// non-zero exit is an error that carries everything it printed, as validators report on
/// either stream.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = capture(cmd)?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            line(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` without a log line, its output captured, whatever its exit status: for
/// commands whose failure the caller interprets.
pub fn capture(cmd: &mut Command) -> Result<Output> {
    cmd.output().with_context(|| cannot_start(cmd))
}

/// Whether `cmd` exits 0, its output discarded; an error only if it cannot start.
pub fn succeeds(cmd: &mut Command) -> Result<bool> {
    Ok(capture(cmd)?.status.success())
}

fn cannot_start(cmd: &Command) -> String {
    format!("cannot run {}", cmd.get_program().to_string_lossy())
}

/// Cargo in the workspace root: this one, or `rustup run TOOLCHAIN cargo`.
pub fn cargo_command(toolchain: Option<&str>) -> Command {
    let mut cmd = match toolchain {
        Some(toolchain) => {
            let mut cmd = Command::new("rustup");
            cmd.args(["run", toolchain, "cargo"]);
            cmd
        }
        None => Command::new(env!("CARGO")),
    };
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs `cargo ARGS` (see [`cargo_command`]), its line logged; a non-zero exit is an error.
pub fn cargo(toolchain: Option<&str>, args: &[&str]) -> Result<()> {
    let mut cmd = cargo_command(toolchain);
    cmd.args(args).stderr(Stdio::piped());
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut child = cmd.spawn().context("cannot run cargo")?;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
            eprintln!("{}", plain_progress(&String::from_utf8_lossy(&line)));
        }
    }
    let status = child.wait().context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `tracer-user/build.rs` builds the eBPF programs with a nested cargo whose every line
/// cargo shows as a build-script warning (`warning: reapwatch@0.1.0: Compiling ...`),
/// which reads as trouble. They are progress: shown as such.
fn plain_progress(line: &str) -> String {
    match line
        .strip_prefix("warning: reapwatch@")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((_version, progress)) => format!("   ebpf: {}", progress.trim_start()),
        None => line.to_owned(),
    }
}

/// The workspace's root: xtask runs every command from there.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Builds `reapwatch` and the test binaries (`zombie-helper`, `reapwatch-bench`) optimised,
/// for the benchmarks; returns their directory.
pub fn release_binaries() -> Result<PathBuf> {
    cargo(
        None,
        &[
            "build",
            "--release",
            "--package",
            "reapwatch",
            "--package",
            "reapwatch-tests",
            "--bins",
        ],
    )?;
    Ok(workspace_root().join("target/release"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nested_ebpf_build_reads_as_progress() {
        assert_eq!(
            plain_progress("warning: reapwatch@0.1.0:    Compiling core v0.0.0 (/x)"),
            "   ebpf: Compiling core v0.0.0 (/x)"
        );
        assert_eq!(
            plain_progress("warning: unused variable: `x`"),
            "warning: unused variable: `x`"
        );
        assert_eq!(plain_progress("   Compiling xtask"), "   Compiling xtask");
    }

    #[test]
    fn a_failure_names_the_command_and_carries_its_output() {
        let err = output(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("sh -c echo out; echo err >&2; exit 3 failed ("));
        assert!(err.ends_with("out\nerr\n"), "{err:?}");
        assert_eq!(output(Command::new("echo").arg("hi")).unwrap(), "hi\n");
        assert!(!succeeds(&mut Command::new("false")).unwrap());
        assert!(run(&mut Command::new("/nonexistent/program")).is_err());
    }
}
