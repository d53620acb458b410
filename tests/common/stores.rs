//! Object-store servers on loopback for the tests: moto (S3-compatible, from PyPI), started on a
//! free port and killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process killed when the test ends.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) port: u16,
    /// Its request log, when kept.
    pub(crate) log: Option<tempfile::NamedTempFile>,
}

impl Server {
    pub(crate) fn log(&self) -> String {
        self.log
            .as_ref()
            .map(|f| std::fs::read_to_string(f.path()).unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not listen on port {port} within 60s");
}

/// moto's S3 server (`pip install 'moto[server]'`; `.ci/run` installs it).
pub(crate) fn start_moto() -> Server {
    let port = super::free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .expect("python3 -m moto.server starts (pip install 'moto[server]')");
    wait_for_port(port, "moto", &mut child);
    Server {
        child,
        port,
        log: Some(log),
    }
}

pub(crate) fn create_bucket(port: u16, bucket: &str) {
    let status = Command::new("curl")
        .args([
            "-sf",
            "-X",
            "PUT",
            &format!("http://127.0.0.1:{port}/{bucket}"),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "bucket {bucket} created");
}
