//! Real Python clients (ADBC's DB-API and pyarrow.flight, tests in tests/python/) against a
//! `flowengine serve` process. Needs `python3 -m pip install adbc-driver-flightsql pyarrow
//! pytest` (done by .ci/run); fails, never skips, when they are missing.

mod common;

use common::server::ServerProcess;

/// `python3 -m pytest -q ARGS` in the repository, with `env` set.
fn pytest(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    std::process::Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run python3 -m pytest (pip install pytest adbc-driver-flightsql pyarrow)")
}

#[test]
fn python_adbc_and_pyarrow_clients() {
    let catalog = common::repo("sql-examples/serve_catalog.sql");
    let server = ServerProcess::start(&[catalog.as_path()], "");
    let out = pytest(
        &[
            "tests/python",
            // The README's snippets run against a server started as the README says (below).
            "--deselect",
            "tests/python/test_readme.py::test_readme_connect_snippets",
        ],
        &[
            ("FLOWENGINE_FLIGHT_URI", server.uri()),
            ("FLOWENGINE_ADMIN_URL", format!("http://{}", server.admin)),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client tests failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        server.drain_log().join("\n")
    );
    assert!(stdout.contains("passed"), "{stdout}");
}

/// The README's first serve and connect steps, as a newcomer runs them: `flowengine serve
/// --catalog sql-examples/serve_catalog.sql` with no configuration prints a one-time token and
/// accepts only it; the README's Python snippets, with that token exported, query the server.
#[test]
fn readme_serve_and_connect_steps_run_as_written() {
    let catalog = common::repo("sql-examples/serve_catalog.sql");
    // No users, no API keys, authentication on (the default): a first run.
    let server = ServerProcess::start(&[catalog.as_path()], "[security]\n");
    let token = server
        .startup
        .iter()
        .find_map(|l| l.trim().strip_prefix("export FLOWENGINE_TOKEN="))
        .unwrap_or_else(|| panic!("no token printed:\n{}", server.startup.join("\n")))
        .to_string();
    assert!(token.len() > 40, "{token}");
    let readme = |token: &str| {
        pytest(
            &["tests/python/test_readme.py"],
            &[
                ("FLOWENGINE_FLIGHT_URI", server.uri()),
                ("FLOWENGINE_TOKEN", token.to_string()),
            ],
        )
    };
    let out = readme(&token);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("passed"),
        "README snippets failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.drain_log().join("\n")
    );
    // Only the token gets in.
    let out = readme("fek_first_not_the_token");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nauthenticated"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
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

/// ADBC and pyarrow.flight against a server with users, an API key, grants, a row filter and a
/// mask (tests/python_security/).
#[test]
fn python_clients_log_in_and_are_limited_by_grants() {
    let key = "fek_python_clients_test_key_0123456789abcdef0123456789abcdef01234567";
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.sql");
    std::fs::write(
        &catalog,
        "CREATE TABLE orders (id INT, region VARCHAR, amount INT) AS VALUES (1, 'eu', 10), (2, 'us', 20), (3, 'eu', 30);
         CREATE TABLE customers (id INT, email VARCHAR) AS VALUES (1, 'a@x.com'), (2, 'b@y.com');
         CREATE TABLE salaries (id INT, pay INT) AS VALUES (1, 100);
         CREATE VIEW pay_view AS SELECT * FROM salaries;",
    )
    .unwrap();
    common::certs::ca(dir.path(), "ca");
    let (server_cert, server_key) =
        common::certs::leaf(dir.path(), "ca", "server", "localhost", false);
    let config = format!(
        r#"
[server.tls]
cert_file = "{server_cert}"
key_file = "{server_key}"

[security]
[[security.users]]
name = "ana"
password_hash = "{ana}"
roles = ["analyst"]
attributes = {{ region = "eu" }}

[[security.api_keys]]
name = "loader"
key_sha256 = "{key_sha}"
roles = ["admin"]

[[security.roles]]
name = "analyst"
grants = [{{ privileges = ["SELECT"], on = "orders" }}, {{ privileges = ["SELECT"], on = "customers" }}]
row_filters = [{{ table = "orders", filter = "region = current_user_attribute('region')" }}]
masks = [{{ table = "customers", column = "email", with = "'***'" }}]
"#,
        ana = common::hash_password("ana-python-pw"),
        key_sha = engine::security::credentials::sha256_hex(key),
        server_cert = server_cert.display(),
        server_key = server_key.display(),
    );
    let server = ServerProcess::start(&[catalog.as_path()], &config);
    let out = pytest(
        &["tests/python_security"],
        &[
            (
                "FLOWENGINE_FLIGHT_URI",
                format!("grpc+tls://{}", server.flight),
            ),
            (
                "FLOWENGINE_TEST_CA",
                dir.path().join("ca.pem").display().to_string(),
            ),
            ("FLOWENGINE_TEST_PASSWORD", "ana-python-pw".to_string()),
            ("FLOWENGINE_TEST_API_KEY", key.to_string()),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python security tests failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.drain_log().join("\n")
    );
    assert!(stdout.contains("6 passed"), "{stdout}");
}
