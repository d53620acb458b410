//! A `flowengine serve` child process on free loopback ports, killed on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub(crate) struct ServerProcess {
    pub(crate) child: Child,
    pub(crate) flight: SocketAddr,
    pub(crate) admin: SocketAddr,
    /// Lines the server wrote to stderr (collected in the background).
    pub(crate) log: mpsc::Receiver<String>,
    /// The `flowengine.toml` it was started with (rewrite it, then [`ServerProcess::signal`]
    /// `HUP` to reload).
    pub(crate) config: std::path::PathBuf,
    /// What it printed up to `flowengine: ready`.
    pub(crate) startup: Vec<String>,
}

impl ServerProcess {
    /// Start a server with these catalog files and `flowengine.toml` text (may be empty).
    /// Without a `[security]` section the server runs with `auth = "none"` (loopback only),
    /// so functional tests need no credentials; tests/security.rs configures users.
    pub(crate) fn start(catalogs: &[&Path], config: &str) -> Self {
        Self::start_with_env(catalogs, config, &[])
    }

    /// [`ServerProcess::start`] with extra environment variables.
    pub(crate) fn start_with_env(catalogs: &[&Path], config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_with_args(catalogs, config, env, &[])
    }

    /// [`ServerProcess::start_with_env`] with extra `serve` arguments.
    pub(crate) fn start_with_args(
        catalogs: &[&Path],
        config: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("flowengine.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowengine"));
        cmd.arg("--config")
            .arg(&config_path)
            .arg("serve")
            .args(["--bind", "127.0.0.1:0", "--admin-bind", "127.0.0.1:0"])
            .env_remove("FLOWENGINE_CONFIG")
            .env_remove("FLOWENGINE_SECURITY_AUTH")
            .env_remove("MIMALLOC_ALLOW_THP")
            .env("FLOWENGINE_LOG", "info")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !config.contains("[security") {
            cmd.env("FLOWENGINE_SECURITY_AUTH", "none");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        for c in catalogs {
            cmd.arg("--catalog").arg(c);
        }
        cmd.args(args);
        let mut child = cmd.spawn().expect("start flowengine serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep the temporary config alive as long as the server reads its stderr.
            let _dir = dir;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut flight = None;
        let mut admin = None;
        let mut seen = Vec::new();
        loop {
            let line = match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(l) => l,
                Err(_) => panic!("server did not become ready; output:\n{}", seen.join("\n")),
            };
            if let Some(rest) = line
                .strip_prefix("flowengine: Flight SQL listening on grpc://")
                .or_else(|| line.strip_prefix("flowengine: Flight SQL listening on grpc+tls://"))
            {
                let (f, a) = rest
                    .split_once(" ; admin on http://")
                    .or_else(|| rest.split_once(" ; admin on https://"))
                    .unwrap();
                flight = Some(f.parse().unwrap());
                admin = Some(a.parse().unwrap());
            }
            let ready = line == "flowengine: ready";
            seen.push(line);
            if ready {
                break;
            }
        }
        Self {
            child,
            flight: flight.unwrap(),
            admin: admin.unwrap(),
            log: rx,
            config: config_path,
            startup: seen,
        }
    }

    pub(crate) fn uri(&self) -> String {
        format!("grpc://{}", self.flight)
    }

    /// Log lines received so far.
    pub(crate) fn drain_log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }

    /// Log lines up to the first that contains `needle` (waiting up to 10 s for the server to
    /// write it and the reader thread to pass it on); all lines read when it never comes.
    pub(crate) fn wait_for_log(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    seen.push(line);
                    if found {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        seen.join("\n")
    }

    /// True while the process runs.
    pub(crate) fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Resident memory of the server process, in bytes.
    pub(crate) fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    }

    /// Send SIGTERM.
    pub(crate) fn terminate(&self) {
        self.signal("TERM");
    }

    /// Send a signal by name (`HUP`, `TERM`, ...).
    pub(crate) fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on the admin endpoint: (status code, body).
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
