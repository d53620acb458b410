//! Real Python clients (ADBC's DB-API and pyarrow.flight, tests in tests/python/) against a
//! `flowengine serve` process. Needs `python3 -m pip install adbc-driver-flightsql pyarrow
//! pytest` (done by .ci/run); fails, never skips, when they are missing.

mod common;

use common::server::ServerProcess;

#[test]
fn python_adbc_and_pyarrow_clients() {
    let catalog = common::repo("sql-examples/serve_catalog.sql");
    let server = ServerProcess::start(&[catalog.as_path()], "");
    let out = std::process::Command::new("python3")
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/python",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("FLOWENGINE_FLIGHT_URI", server.uri())
        .env("FLOWENGINE_ADMIN_URL", format!("http://{}", server.admin))
        .output()
        .expect("run python3 -m pytest (pip install pytest adbc-driver-flightsql pyarrow)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client tests failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        server.drain_log().join("\n")
    );
    assert!(stdout.contains("passed"), "{stdout}");
}

/// The notebook in sql-examples/ runs end to end against a live server.
#[test]
fn notebook_executes_end_to_end() {
    let catalog = common::repo("sql-examples/serve_catalog.sql");
    let server = ServerProcess::start(&[catalog.as_path()], "");
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("plot.png");
    let out = std::process::Command::new("python3")
        .args([
            "-m",
            "jupyter",
            "nbconvert",
            "--to",
            "notebook",
            "--execute",
            "--ExecutePreprocessor.timeout=120",
            "--output-dir",
        ])
        .arg(dir.path())
        .arg(common::repo("sql-examples/notebook.ipynb"))
        .env("FLOWENGINE_FLIGHT_URI", server.uri())
        .env("FLOWENGINE_NOTEBOOK_PLOT", &plot)
        .env("MPLBACKEND", "Agg")
        .output()
        .expect("run jupyter nbconvert (pip install nbconvert ipykernel matplotlib)");
    assert!(
        out.status.success(),
        "notebook failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&plot).expect("the notebook saved its chart");
    assert!(png.starts_with(b"\x89PNG"));
}
