//! A Ballista cluster of `flowengine` processes on loopback (a scheduler and two executors),
//! TPC-H data for it, and result comparison, shared by the cluster tests.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const TABLES: [&str; 8] = [
    "customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier",
];

/// Two free ports next to each other (an executor's Flight port and its gRPC port).
pub(crate) fn free_port_pair() -> u16 {
    loop {
        let p = super::free_port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

pub(crate) fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn spawn(args: &[String], log: &Path, env: &[(&str, String)]) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_flowengine"))
        .args(args)
        .env("FLOWENGINE_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("FLOWENGINE_CONFIG")
        .env_remove("FLOWENGINE_CLUSTER")
        // Nodes reach object stores only through what the session sends them.
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start flowengine")
}

/// A scheduler and two executors; all killed on drop.
pub(crate) struct Cluster {
    pub(crate) scheduler: Child,
    pub(crate) executors: Vec<Child>,
    pub(crate) url: String,
    pub(crate) logs: tempfile::TempDir,
}

impl Cluster {
    pub(crate) fn start() -> Self {
        Self::start_with(&[])
    }

    /// The log of executor `i` so far.
    pub(crate) fn executor_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.logs.path().join(format!("executor{i}.log")))
            .unwrap_or_default()
    }

    /// A cluster whose nodes have `env` set (secrets, a log filter, for instance).
    pub(crate) fn start_with(env: &[(&str, String)]) -> Self {
        let logs = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let scheduler = spawn(
            &[
                "scheduler".into(),
                "--bind".into(),
                format!("127.0.0.1:{port}"),
                "--executor-timeout-secs".into(),
                "5".into(),
                "--task-max-failures".into(),
                "4".into(),
            ],
            &logs.path().join("scheduler.log"),
            env,
        );
        wait_port(port, "the scheduler");
        let mut executors = Vec::new();
        for i in 0..2 {
            let flight = free_port_pair();
            executors.push(spawn(
                &[
                    "executor".into(),
                    "--scheduler".into(),
                    format!("127.0.0.1:{port}"),
                    "--bind".into(),
                    format!("127.0.0.1:{flight}"),
                    "--concurrent-tasks".into(),
                    "2".into(),
                    "--heartbeat-secs".into(),
                    "1".into(),
                    "--work-dir".into(),
                    logs.path().join(format!("work{i}")).display().to_string(),
                ],
                &logs.path().join(format!("executor{i}.log")),
                env,
            ));
            std::fs::create_dir_all(logs.path().join(format!("work{i}"))).unwrap();
            wait_port(flight, "an executor's Flight service");
            wait_port(flight + 1, "an executor's gRPC service");
        }
        Cluster {
            scheduler,
            executors,
            url: format!("df://127.0.0.1:{port}"),
            logs,
        }
    }

    pub(crate) fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.logs.path()).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                out.push_str(&format!("--- {}\n", entry.path().display()));
                out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self
            .executors
            .iter_mut()
            .chain(std::iter::once(&mut self.scheduler))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// TPC-H at SF 0.01 as Parquet and lineitem as CSV, generated once per test run.
pub(crate) fn tpch_data() -> PathBuf {
    // The tests of this file run in parallel threads: one generates, the others wait.
    static GENERATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = GENERATING.lock().unwrap_or_else(|p| p.into_inner());
    let dir = std::env::temp_dir().join("flowengine-cluster-tpch-sf0.01");
    for format in ["parquet", "csv"] {
        let out = dir.join(format);
        if TABLES
            .iter()
            .all(|t| out.join(format!("{t}.{format}")).exists())
        {
            continue;
        }
        let status = Command::new("tpchgen-cli")
            .args([format, "-s", "0.01", "-o"])
            .arg(&out)
            .arg("--overwrite")
            .status()
            .expect("tpchgen-cli (pip install tpchgen-cli) is required by tests/cluster.rs");
        assert!(status.success());
    }
    dir
}

pub(crate) fn tables_sql(dir: &Path) -> PathBuf {
    let path = dir.join("tables.sql");
    let text: String = TABLES
        .iter()
        .map(|t| {
            format!(
                "CREATE EXTERNAL TABLE {t} STORED AS PARQUET LOCATION '{}/parquet/{t}.parquet';\n",
                dir.display()
            )
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// `flowengine sql` on the cluster (or in-process with `None`): (success, stdout, stderr).
pub(crate) fn sql(cluster: Option<&str>, init: &Path, query: &str) -> (bool, String, String) {
    let mut cmd = super::flowengine();
    if let Some(url) = cluster {
        cmd.args(["--cluster", url]);
    }
    let out = cmd
        .args(["sql", "--format", "csv", "--init"])
        .arg(init)
        .args(["-c", query])
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Write `text` to `path` and `flowengine run` it on the cluster at `url`.
pub(crate) fn run_on(url: &str, path: &Path, text: &str) -> std::process::Output {
    std::fs::write(path, text).unwrap();
    super::flowengine()
        .args(["--cluster", url, "run"])
        .arg(path)
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap()
}

/// Rows as sorted vectors of cells, numbers compared with a tolerance (the order of a
/// distributed sum's additions differs from a single node's).
pub(crate) fn rows(csv: &str) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    rows.sort();
    rows
}

pub(crate) fn same_results(a: &str, b: &str) -> Result<(), String> {
    let (a, b) = (rows(a), rows(b));
    if a.len() != b.len() {
        return Err(format!("{} rows vs {}", a.len(), b.len()));
    }
    for (ra, rb) in a.iter().zip(&b) {
        let same = ra.len() == rb.len()
            && ra.iter().zip(rb).all(|(x, y)| {
                x == y
                    || matches!((x.parse::<f64>(), y.parse::<f64>()),
                        (Ok(x), Ok(y)) if (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0))
            });
        if !same {
            return Err(format!("row differs: {ra:?} vs {rb:?}"));
        }
    }
    Ok(())
}
