//! A real Prometheus scrapes `reapwatch serve` and answers PromQL about a leaking workload and
//! an autoreaping one.

use std::{
    fs,
    process::{Child, Command, Stdio},
    time::Duration,
};

use reapwatch_tests::{eventually, get, Daemon, Helper, TestCgroup};
use serde_json::Value;

struct Prometheus {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(target_port: u16) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("reapwatch-prometheus-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: reapwatch\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus)");
        Self { child, port, dir }
    }

    /// The instant vector of a PromQL query: `(labels, value)` pairs.
    fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let mut url = format!("http://127.0.0.1:{}/api/v1/query?query=", self.port);
        for byte in promql.bytes() {
            if byte.is_ascii_alphanumeric() {
                url.push(byte as char);
            } else {
                url.push_str(&format!("%{byte:02X}"));
            }
        }
        let Some((200, body)) = get(&url, &[]) else {
            return Vec::new();
        };
        let response: Value = serde_json::from_str(&body).unwrap();
        response["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                (
                    r["metric"].clone(),
                    r["value"][1].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn promql_sees_the_leak_and_not_the_autoreaper() {
    let daemon = Daemon::start(&[]);
    let prometheus = Prometheus::start(daemon.port);
    assert!(
        eventually(Duration::from_secs(60), || {
            prometheus.query("up{job=\"reapwatch\"} == 1").len() == 1
        }),
        "prometheus never scraped reapwatch"
    );

    let leaking = TestCgroup::new("prom-leak");
    let autoreaping = TestCgroup::new("prom-ignore");
    // Stage 0 forks without leaving a zombie: the cgroup's series exist at zero first, so
    // the later zombie is an increase Prometheus can rate.
    let mut leak = Helper::start("leader-exit", 1, &leaking);
    let _ignore = Helper::start("ignore", 20, &autoreaping);
    let series = |cgroup: &TestCgroup| {
        format!(
            "reapwatch_zombies_created_total{{cgroup=\"{}\"}}",
            cgroup.host_path()
        )
    };
    assert!(eventually(Duration::from_secs(30), || {
        prometheus.query(&series(&leaking)).len() == 1
            && prometheus.query(&series(&autoreaping)).len() == 1
    }));
    leak.step();

    let rate = |cgroup: &TestCgroup| {
        prometheus
            .query(&format!("rate({}[1m])", series(cgroup)))
            .first()
            .map(|(_, value)| *value)
    };
    assert!(
        eventually(Duration::from_secs(30), || rate(&leaking)
            .is_some_and(|r| r > 0.0)),
        "rate of the leaking cgroup stayed {:?}",
        rate(&leaking)
    );
    assert_eq!(rate(&autoreaping), Some(0.0));
    let forks = prometheus.query(&format!(
        "reapwatch_process_forks_total{{cgroup=\"{}\"}}",
        autoreaping.host_path()
    ));
    assert_eq!(forks.first().map(|(_, v)| *v), Some(20.0));
}
