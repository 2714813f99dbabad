//! `--web-config-file` in the exporter-toolkit's format: a real Prometheus scrapes over
//! mutual TLS with basic auth; wrong credentials, plain HTTP and clients without a
//! certificate are refused; the file is reloaded when it changes, and a broken one is kept
//! out.

use std::{fs, path::Path, process::Command, time::Duration};

use reapwatch_tests::{eventually, free_port, get, workspace_binary, Daemon, Pki, Prometheus};

/// The HTTP status curl got, None when no response came (refused handshake, plain HTTP to a
/// TLS port).
fn curl(url: &str, args: &[&str]) -> Option<u16> {
    let output = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("curl (Debian package curl)");
    let code: u16 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .ok()?;
    (code != 0).then_some(code)
}

fn write_atomically(path: &Path, text: &str) {
    let new = path.with_extension("new");
    fs::write(&new, text).expect("write the web config");
    fs::rename(&new, path).expect("replace the web config");
}

/// The lowest cost: the exporter under test is a debug build, where bcrypt is slow.
fn bcrypt(password: &str) -> String {
    bcrypt::hash(password, 4).expect("bcrypt")
}

#[test]
fn prometheus_scrapes_over_mutual_tls_with_basic_auth() {
    let pki = Pki::new("mtls", "IP:127.0.0.1");
    let config = pki.dir.join("web.yml");
    // Paths relative to the file, as exporter-toolkit reads them.
    fs::write(
        &config,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS12\nbasic_auth_users:\n  prometheus: '{}'\n",
            bcrypt("scrape-me")
        ),
    )
    .expect("web config");
    // The kubelet's probes can send neither a password nor a client certificate: they use
    // the health address.
    let health_port = free_port();
    let mut daemon = Daemon::spawn(
        &[],
        &[
            "--web-config-file",
            &config.display().to_string(),
            "--health-listen",
            &format!("127.0.0.1:{health_port}"),
        ],
    );
    let port = daemon.port;
    let https = |path: &str| format!("https://127.0.0.1:{port}{path}");
    let (ca, cert, key) = (
        pki.path("ca.crt"),
        pki.path("client.crt"),
        pki.path("client.key"),
    );
    let with_cert = ["--cacert", &ca, "--cert", &cert, "--key", &key];
    // Probes need no password (the kubelet cannot send one).
    assert!(
        eventually(Duration::from_secs(30), || {
            daemon.assert_running();
            curl(&https("/readyz"), &with_cert) == Some(200)
        }),
        "never ready over TLS"
    );

    let health = |path: &str| get(&format!("http://127.0.0.1:{health_port}{path}"), &[]);
    assert_eq!(health("/healthz").map(|(status, _)| status), Some(200));
    assert_eq!(health("/readyz").map(|(status, _)| status), Some(200));
    assert_eq!(
        health("/metrics").map(|(status, _)| status),
        Some(404),
        "the health address serves metrics"
    );

    let prometheus = Prometheus::start_with(
        daemon.port,
        "1s",
        &format!(
            "    scheme: https\n    tls_config:\n      ca_file: {ca}\n      cert_file: {cert}\n      key_file: {key}\n    basic_auth:\n      username: prometheus\n      password: scrape-me\n"
        ),
    );
    assert!(
        eventually(Duration::from_secs(30), || {
            prometheus.query("up{job=\"reapwatch\"} == 1").len() == 1
        }),
        "prometheus never scraped reapwatch over TLS: {}",
        prometheus.last_error()
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            prometheus.query("reapwatch_node_pid_max > 0").len() == 1
        }),
        "no reapwatch series in prometheus"
    );

    let metrics = https("/metrics");
    let as_user = |password: &str| {
        let user = format!("prometheus:{password}");
        let mut args = with_cert.to_vec();
        args.extend(["-u", &user]);
        curl(&metrics, &args)
    };
    assert_eq!(as_user("scrape-me"), Some(200));
    assert_eq!(as_user("wrong"), Some(401));
    assert_eq!(curl(&metrics, &with_cert), Some(401), "no credentials");
    assert_eq!(
        curl(&metrics, &["--cacert", &ca, "-u", "prometheus:scrape-me"]),
        None,
        "a client without a certificate got an answer"
    );
    assert_eq!(
        curl(&format!("http://127.0.0.1:{}/healthz", daemon.port), &[]),
        None,
        "plain HTTP got an answer from the TLS port"
    );
}

#[test]
fn the_web_config_is_reloaded_and_a_broken_one_is_kept_out() {
    let dir = std::env::temp_dir().join(format!("reapwatch-web-reload-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("web.yml");
    let users =
        |password: &str| format!("basic_auth_users:\n  prometheus: '{}'\n", bcrypt(password));
    fs::write(&config, users("first")).expect("web config");
    // Plain HTTP with basic auth: the probes (no password) say when it is ready.
    let daemon = Daemon::start(&["--web.config.file", &config.display().to_string()]);
    let metrics = format!("http://127.0.0.1:{}/metrics", daemon.port);
    let status = |password: &str| curl(&metrics, &["-u", &format!("prometheus:{password}")]);
    assert_eq!(status("first"), Some(200));
    assert_eq!(status("second"), Some(401));

    write_atomically(&config, &users("second"));
    assert!(
        eventually(Duration::from_secs(10), || status("second") == Some(200)),
        "the new password was never accepted"
    );
    assert_eq!(status("first"), Some(401));

    write_atomically(&config, "basic_auth_users: [\n");
    for _ in 0..3 {
        assert_eq!(
            status("second"),
            Some(200),
            "a broken file replaced the config"
        );
    }
    fs::remove_dir_all(&dir).expect("clean up");
}

/// A new config that fails to load because the certificate files it names are not there
/// yet (a Secret mounted after the ConfigMap): they are watched, and their arrival loads it.
#[test]
fn a_failed_reload_watches_the_files_the_new_config_names() {
    let pki = Pki::new("late", "IP:127.0.0.1");
    let config = pki.dir.join("web.yml");
    fs::write(
        &config,
        format!("basic_auth_users:\n  prometheus: '{}'\n", bcrypt("pw")),
    )
    .expect("web config");
    let daemon = Daemon::start(&["--web-config-file", &config.display().to_string()]);
    let (http, https) = (
        format!("http://127.0.0.1:{}/healthz", daemon.port),
        format!("https://127.0.0.1:{}/healthz", daemon.port),
    );
    write_atomically(
        &config,
        "tls_server_config:\n  cert_file: late/server.crt\n  key_file: late/server.key\n",
    );
    // A connection makes it look at the files: the new config fails, the old one serves.
    assert_eq!(curl(&http, &[]), Some(200));
    assert_eq!(curl(&http, &[]), Some(200));

    let late = pki.dir.join("late");
    fs::create_dir_all(&late).expect("late dir");
    for name in ["server.key", "server.crt"] {
        fs::copy(pki.dir.join(name), late.join(name)).expect("copy");
    }
    let ca = pki.path("ca.crt");
    assert!(
        eventually(Duration::from_secs(10), || {
            curl(&http, &[]);
            curl(&https, &["--cacert", &ca]) == Some(200)
        }),
        "the certificate files of the failed config were never noticed"
    );
}

#[test]
fn a_broken_web_config_at_start_is_a_one_line_error() {
    let dir = std::env::temp_dir().join(format!("reapwatch-web-broken-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("dir");
    for (name, text) in [
        (
            "plaintext.yml",
            "basic_auth_users:\n  prometheus: hunter2\n",
        ),
        (
            "nokey.yml",
            "tls_server_config:\n  cert_file: missing.crt\n",
        ),
        (
            "unknown.yml",
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n",
        ),
    ] {
        let path = dir.join(name);
        fs::write(&path, text).expect("web config");
        let output = Command::new(workspace_binary("reapwatch"))
            .args(["serve", "--listen", "127.0.0.1:0", "--web-config-file"])
            .arg(&path)
            .output()
            .expect("run reapwatch");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name} accepted");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.contains("invalid web config"), "{name}: {stderr}");
    }
    fs::remove_dir_all(&dir).expect("clean up");
}
