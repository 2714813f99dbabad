//! The programs' rare events reach `reapwatch serve`'s log at debug level (through aya-log).

use std::{
    fs,
    process::{Command, Stdio},
    time::Duration,
};

use reapwatch::cgroup::HierarchyChoice;
use reapwatch_tests::{eventually, free_port, get, workspace_binary, Helper, TestCgroup};

/// `reapwatch serve` with its stderr in a file, stopped on drop.
struct LoggingDaemon {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl LoggingDaemon {
    fn start(extra: &[&str]) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("reapwatch-kernel-log-{}", std::process::id()));
        let child = Command::new(workspace_binary("reapwatch"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--sample-interval", "200ms", "--reconcile-interval", "1s"])
            .args(extra)
            .stderr(Stdio::from(
                fs::File::create(&log).expect("create the log file"),
            ))
            .spawn()
            .expect("spawn reapwatch serve");
        let mut daemon = Self { child, log };
        let url = format!("http://127.0.0.1:{port}/readyz");
        let ready = eventually(Duration::from_secs(30), || {
            assert!(
                daemon.child.try_wait().expect("wait").is_none(),
                "reapwatch serve exited:\n{}",
                daemon.text()
            );
            get(&url, &[]).is_some_and(|(status, _)| status == 200)
        });
        assert!(ready, "reapwatch serve never became ready");
        daemon
    }

    fn text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LoggingDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.log);
    }
}

/// A zombie map with room for four: the helper's twelve zombies fill it, and the program that
/// could not record one says so in the log.
#[test]
fn a_full_zombie_map_is_logged_at_debug_level() {
    let daemon = LoggingDaemon::start(&["--log-level", "debug", "--max-zombies", "4"]);
    let cgroup = TestCgroup::in_hierarchy(HierarchyChoice::Auto, "kernel-log");
    let _helper = Helper::start("leak", 12, &cgroup);
    let logged = eventually(Duration::from_secs(10), || {
        daemon
            .text()
            .lines()
            .any(|line| line.contains(" reapwatch: debug: ") && line.contains("ZOMBIES map full"))
    });
    assert!(logged, "no debug line for the full map:\n{}", daemon.text());
}
