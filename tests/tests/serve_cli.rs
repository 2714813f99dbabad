//! `reapwatch serve` as an operator first meets it: the address forms node_exporter users
//! type, the error when it cannot run, and its log lines.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use reapwatch_tests::{eventually, free_port, get, workspace_binary};

#[test]
fn listens_on_a_bare_port_as_node_exporter_does() {
    let port = free_port();
    let mut serve = Command::new(workspace_binary("reapwatch"))
        .args([
            "serve",
            "--listen",
            &format!(":{port}"),
            "--log-level",
            "warn",
        ])
        .spawn()
        .unwrap();
    let healthy = eventually(Duration::from_secs(20), || {
        get(&format!("http://127.0.0.1:{port}/healthz"), &[]).is_some_and(|(s, _)| s == 200)
    });
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(healthy);
}

/// Not root: one line, before it says it listens (it never does).
#[test]
fn without_privileges_it_fails_before_listening() {
    let output = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(workspace_binary("reapwatch"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("reapwatch: permission denied: "),
        "{stderr}"
    );
}

/// Log lines start with the time, in UTC, to the millisecond.
#[test]
fn log_lines_carry_their_time() {
    let mut serve = Command::new(workspace_binary("reapwatch"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--log-level", "info"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(serve.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _ = serve.kill();
    let _ = serve.wait();
    let (time, rest) = first.split_once(' ').unwrap_or_default();
    assert!(rest.starts_with("reapwatch: info: listening on"), "{first}");
    // 2026-11-30T05:40:00.123Z
    let shape: String = time
        .chars()
        .map(|c| if c.is_ascii_digit() { '0' } else { c })
        .collect();
    assert_eq!(shape, "0000-00-00T00:00:00.000Z", "{first}");
}
