//! `reapwatch top` as a pipe reads it, and as a person sees it in a real 80x24 terminal
//! (a tmux pane: keys sent with send-keys, the screen read with capture-pane).

use std::{
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use reapwatch::procfs;
use reapwatch_tests::{eventually, found_age_source, workspace_binary, Helper, TestCgroup};

/// The last component of the test cgroup: what the container column keeps of the path.
fn leaf(cgroup: &TestCgroup) -> String {
    cgroup
        .path
        .file_name()
        .expect("named")
        .to_string_lossy()
        .into_owned()
}

/// The table row whose first field is `first`, split into fields.
fn row<'a>(screen: &'a str, first: &str) -> Option<Vec<&'a str>> {
    screen
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&first))
}

#[test]
fn piped_output_is_repeated_plain_tables() {
    let cgroup = TestCgroup::new("top-plain");
    let helper = Helper::start("leak", 3, &cgroup);
    let output = Command::new(workspace_binary("reapwatch"))
        .args(["top", "--iterations", "2", "--interval", "200ms"])
        .output()
        .expect("run reapwatch top");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    assert!(
        !text.contains('\x1b'),
        "no terminal control in a pipe: {text:?}"
    );

    let count = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(count("reapwatch top "), 2, "{text}");
    assert_eq!(count("node: "), 2, "{text}");
    assert_eq!(count("exhaustion ETA: "), 2, "{text}");
    let headings: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("PID "))
        .collect();
    assert_eq!(headings.len(), 2, "{text}");
    for title in [
        "PID",
        "COMM",
        "UNREAPED",
        "CREATED",
        "OLDEST",
        "LAST WAIT",
        "CONTAINER",
    ] {
        assert!(headings[0].contains(title), "{}", headings[0]);
    }
    let node = text.lines().find(|l| l.starts_with("node: ")).unwrap();
    assert!(
        node.contains(" tasks / pid_max ") && node.contains(" / threads-max "),
        "{node}"
    );

    let pid = helper.parent.to_string();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| fields.first() == Some(&pid.as_str()))
        .collect();
    assert_eq!(rows.len(), 2, "one row per refresh:\n{text}");
    for fields in rows {
        assert_eq!(fields[1], "zombie-helper", "{fields:?}");
        assert_eq!(fields[2], "3", "{fields:?}");
        // Exited before reapwatch started, a moment ago: the scheduler dates them, so all
        // three count in the last minute. Without it: measuring, and lower-bound ages.
        if found_age_source() == "scheduler" {
            assert_eq!(fields[3], "3.0/min", "{fields:?}");
            assert!(!fields[4].starts_with(">="), "{fields:?}");
        } else {
            assert_eq!(fields[3], "measuring", "{fields:?}");
            assert!(fields[4].starts_with(">="), "{fields:?}");
        }
        // Watched for a moment only.
        assert_eq!(fields[5], "unknown", "{fields:?}");
        assert_eq!(fields[6], cgroup.host_path(), "the whole path in a pipe");
    }
}

#[test]
fn bad_interval_is_a_one_line_error() {
    let output: Output = Command::new(workspace_binary("reapwatch"))
        .args(["top", "--interval", "0s"])
        .output()
        .expect("run reapwatch top");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.starts_with("reapwatch: "), "{stderr:?}");
    assert!(stderr.contains("--interval"), "{stderr:?}");
    assert!(output.stdout.is_empty());
}

/// A tmux server of its own with one 80x24 pane running a plain shell.
struct Tmux {
    socket: String,
}

const PANE: &str = "top";
/// The machine is small and shared: screens can take a while to change.
const PATIENCE: Duration = Duration::from_secs(60);

impl Tmux {
    fn start(name: &str) -> Self {
        let tmux = Self {
            socket: format!("reapwatch-{name}-{}", std::process::id()),
        };
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            PANE,
            "-x",
            "80",
            "-y",
            "24",
            // No readline: the line discipline the shell sees is the one reapwatch left.
            "env",
            "PS1=$ ",
            "bash",
            "--norc",
            "--noprofile",
            "--noediting",
        ]);
        assert_eq!(tmux.show("#{window_width}x#{window_height}"), "80x24");
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .env("TERM", "xterm-256color")
            .output()
            .expect("tmux (Debian package tmux)");
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A tmux format of the pane, such as `#{alternate_on}`.
    fn show(&self, format: &str) -> String {
        self.run(&["display-message", "-p", "-t", PANE, format])
            .trim()
            .to_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", PANE])
    }

    fn key(&self, key: &str) {
        self.run(&["send-keys", "-t", PANE, key]);
    }

    fn type_line(&self, text: &str) {
        self.run(&["send-keys", "-t", PANE, "-l", text]);
        self.key("Enter");
    }

    /// Polls the screen until `ready` holds; returns that screen.
    /// Clears the screen and prints `marker` on it. Waits for it: a command typed while the
    /// shell still runs is echoed ahead of the marker, on its line.
    fn print_marker(&self, marker: &str) {
        self.type_line(&format!("clear; echo {marker}"));
        self.wait_for("the marker", |s| s.lines().any(|l| l == marker));
    }

    fn wait_for(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let found = eventually(PATIENCE, || {
            last = self.screen();
            ready(&last)
        });
        assert!(found, "{what} never showed; the screen:\n{last}");
        last
    }

    /// Starts `reapwatch top` in the pane and waits for its first full screen.
    fn start_top(&self) -> String {
        self.type_line(&format!(
            "{} top --interval 300ms; echo \"top exited $?\"",
            workspace_binary("reapwatch").display()
        ));
        let screen = self.wait_for("the keys line", |s| s.contains("q quit"));
        assert_eq!(
            self.show("#{alternate_on}"),
            "1",
            "full screen runs on the alternate screen"
        );
        screen
    }

    /// The pid of the program the shell in the pane runs.
    fn foreground_reapwatch(&self) -> u32 {
        let shell: u32 = self.show("#{pane_pid}").parse().expect("pane pid");
        procfs::scan(Path::new("/proc"))
            .expect("scan /proc")
            .processes
            .into_iter()
            .find(|p| p.ppid == shell && p.comm == b"reapwatch")
            .expect("reapwatch runs in the pane")
            .pid
    }

    /// After `top` ended: exit 0, the shell's screen back with `marker` on it, the cursor
    /// shown, and the line discipline cooked again (canonical input, echo, signals).
    fn assert_restored(&self, marker: &str) {
        // The typed command line holds the words too, but not at a line's start.
        let screen = self.wait_for("the exit status", |s| {
            s.lines().any(|l| l.starts_with("top exited "))
        });
        assert!(
            screen.lines().any(|l| l == "top exited 0"),
            "exit status:\n{screen}"
        );
        assert!(
            screen.lines().any(|l| l == marker),
            "the screen from before is back:\n{screen}"
        );
        assert_eq!(self.show("#{alternate_on}"), "0", "alternate screen left");
        assert_eq!(self.show("#{cursor_flag}"), "1", "cursor shown again");
        self.type_line("clear; stty -a | tr ' ;' '\\n\\n' | grep -xE -- '-?(isig|icanon|echo)' | tr '\\n' ' '; echo '<- modes'");
        let screen = self.wait_for("the terminal modes", |s| {
            s.lines().any(|l| l.ends_with(" <- modes"))
        });
        assert!(
            screen.lines().any(|l| l == "isig icanon echo <- modes"),
            "terminal modes:\n{screen}"
        );
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

#[test]
fn terminal_keys_sort_group_and_quit() {
    let cgroup = TestCgroup::new("tt");
    let helper = Helper::start("leak", 3, &cgroup);
    let pid = helper.parent.to_string();
    let tmux = Tmux::start("keys");
    tmux.print_marker("before-top");

    tmux.start_top();
    let screen = tmux.wait_for("the helper's row", |s| {
        row(s, &pid).is_some_and(|f| f.len() >= 3 && f[1] == "zombie-helper" && f[2] == "3")
    });
    assert!(
        !screen.lines().any(|l| l == "before-top"),
        "the shell's screen is hidden:\n{screen}"
    );
    let lines: Vec<&str> = screen.lines().collect();
    assert!(lines[0].starts_with("reapwatch top ") && lines[0].contains("sort: count"));
    assert!(lines[1].starts_with("node: ") && lines[1].contains("pid_max"));
    assert!(lines[2].starts_with("exhaustion ETA: "));
    assert!(lines[3].trim_start().starts_with("PID COMM"), "{screen}");
    assert!(lines[3].trim_end().ends_with("CONTAINER"), "{screen}");
    let fields = row(&screen, &pid).unwrap();
    assert!(
        fields[3].ends_with("/min") || fields[3] == "measuring",
        "{fields:?}"
    );
    assert!(fields[6].ends_with(&leaf(&cgroup)), "{fields:?}");

    tmux.key("s");
    let screen = tmux.wait_for("sort by rate", |s| s.contains("sort: rate"));
    assert!(!screen.contains("sort: count"), "{screen}");
    tmux.key("s");
    tmux.wait_for("sort by age", |s| s.contains("sort: age"));

    tmux.key("c");
    let screen = tmux.wait_for("the container view", |s| {
        s.lines()
            .any(|l| l.starts_with("CONTAINER ") && l.contains("PARENTS"))
    });
    assert!(screen.contains("view: containers"), "{screen}");
    let group = screen
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first().is_some_and(|c| c.ends_with(&leaf(&cgroup))))
        .unwrap_or_else(|| panic!("no row for the test cgroup:\n{screen}"));
    assert_eq!(group[1..3], ["1", "3"], "one parent, three unreaped");
    assert!(screen.contains("c one row per parent"), "{screen}");

    tmux.key("q");
    tmux.assert_restored("before-top");
}

#[test]
fn ctrl_c_and_sigterm_restore_the_terminal() {
    let tmux = Tmux::start("signals");
    tmux.print_marker("before-ctrl-c");
    tmux.start_top();
    tmux.key("C-c");
    tmux.assert_restored("before-ctrl-c");

    tmux.print_marker("before-sigterm");
    tmux.start_top();
    let pid = tmux.foreground_reapwatch();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    tmux.assert_restored("before-sigterm");
}
