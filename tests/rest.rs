//! REST APIs as tables (`STORED AS HTTP_JSON`) against a local HTTP server started by the test:
//! next-link (body and `Link` header), cursor and page-number pagination, records at a JSON
//! path, an auth header from a secret, declared and inferred schemas, retries on 503; and
//! webhooks as sinks (`STORED AS WEBHOOK`): batches, body layouts, idempotency keys, retries
//! and partial-delivery errors.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{flowengine, write_pipeline};
use predicates::prelude::*;

/// 25 items served 10 per page in four styles; every request must carry the bearer token.
const SERVER: &str = r#"
import http.server, json, sys, urllib.parse
ITEMS = [{"id": i, "name": "item %d" % i, "price": i * 1.5, "tags": {"even": i % 2 == 0}} for i in range(1, 26)]
state = {"fail": 2}
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def send(self, code, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(code)
        for k, v in headers: self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        if self.headers.get("Authorization") != "Bearer t0ken":
            return self.send(401, {"error": "unauthorized"})
        u = urllib.parse.urlparse(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        if u.path == "/flaky" and state["fail"] > 0:
            state["fail"] -= 1
            return self.send(503, {"error": "busy"})
        if u.path in ("/next", "/flaky"):
            off = int(q.get("offset", 0))
            nxt = "%s?offset=%d" % (u.path, off + 10) if off + 10 < len(ITEMS) else None
            return self.send(200, {"data": {"items": ITEMS[off:off + 10]}, "links": {"next": nxt}})
        if u.path == "/linkheader":
            off = int(q.get("offset", 0))
            h = [("Link", '<http://127.0.0.1:%d/linkheader?offset=%d>; rel="next"' % (PORT, off + 10))] if off + 10 < len(ITEMS) else []
            return self.send(200, ITEMS[off:off + 10], h)
        if u.path == "/cursor":
            off = int(q.get("cursor", 0))
            return self.send(200, {"results": ITEMS[off:off + 10], "next_cursor": str(off + 10) if off + 10 < len(ITEMS) else ""})
        if u.path == "/received":
            return self.send(200, RECEIVED)
        if u.path == "/attempts":
            return self.send(200, ATTEMPTS)
        if u.path == "/page":
            p = int(q.get("p", 1))
            return self.send(200, {"rows": ITEMS[(p - 1) * 10:p * 10]})
        self.send(404, {"error": "no such path"})
    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        path = urllib.parse.urlparse(self.path).path
        key, ctype = self.headers.get("Idempotency-Key"), self.headers.get("Content-Type")
        def attempt(status):
            ATTEMPTS.append({"path": path, "key": key, "status": status})
        if self.headers.get("Authorization") != "Bearer t0ken":
            attempt(401)
            return self.send(401, {"error": "unauthorized"})
        if path == "/hook-denied":
            attempt(400)
            return self.send(400, {"error": "rejected"})
        if path == "/hook-flaky" and state["hook_fail"] > 0:
            state["hook_fail"] -= 1
            attempt(503)
            return self.send(503, {"error": "busy"})
        if ctype == "application/x-ndjson":
            records = [json.loads(l) for l in raw.splitlines() if l]
        else:
            body = json.loads(raw)
            records = body["rows"] if isinstance(body, dict) else body
        attempt(200)
        for r in records:
            r.update({"_path": path, "_key": key, "_ctype": ctype})
            RECEIVED.append(r)
        self.send(200, {"ok": True})
RECEIVED, ATTEMPTS = [], []
state["hook_fail"] = 2
PORT = int(sys.argv[1])
http.server.ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
"#;

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start() -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new("python3")
        .args(["-c", SERVER, &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "test server did not start");
        assert!(child.try_wait().unwrap().is_none(), "test server exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server(child, port)
}

#[test]
fn paginated_rest_sources() {
    let server = start();
    let base = format!("http://127.0.0.1:{}", server.1);
    let dir = tempfile::tempdir().unwrap();
    let auth = "'header.authorization' 'Bearer ${secret:API_TOKEN}'";
    let sql = format!(
        "CREATE EXTERNAL TABLE by_link STORED AS HTTP_JSON LOCATION '{base}/next'
  OPTIONS ('records_path' 'data.items', 'pagination' 'next_link', 'next_link_path' 'links.next', {auth});
CREATE EXTERNAL TABLE by_header (id BIGINT, name VARCHAR) STORED AS HTTP_JSON LOCATION '{base}/linkheader'
  OPTIONS ('pagination' 'next_link', {auth});
CREATE EXTERNAL TABLE by_cursor STORED AS HTTP_JSON LOCATION '{base}/cursor'
  OPTIONS ('records_path' 'results', 'pagination' 'cursor', 'cursor_path' 'next_cursor', 'cursor_param' 'cursor', {auth});
CREATE EXTERNAL TABLE by_page STORED AS HTTP_JSON LOCATION '{base}/page'
  OPTIONS ('records_path' 'rows', 'pagination' 'page', 'page_param' 'p', {auth});
CREATE EXTERNAL TABLE flaky STORED AS HTTP_JSON LOCATION '{base}/flaky'
  OPTIONS ('records_path' 'data.items', 'pagination' 'next_link', 'next_link_path' 'links.next', 'retry_backoff_ms' '20', {auth});
SELECT 'link' AS src, count(*) AS n, sum(id) AS ids, sum(price) AS price, sum(CASE WHEN tags['even'] THEN 1 ELSE 0 END) AS even FROM by_link
UNION ALL SELECT 'header', count(*), sum(id), NULL, NULL FROM by_header
UNION ALL SELECT 'cursor', count(*), sum(id), sum(price), NULL FROM by_cursor
UNION ALL SELECT 'page', count(*), sum(id), sum(price), NULL FROM by_page
UNION ALL SELECT 'flaky', count(*), sum(id), NULL, NULL FROM flaky
ORDER BY src;"
    );
    let p = write_pipeline(dir.path(), "rest.sql", &sql);
    let out = flowengine()
        .env("FLOWENGINE_SECRET_API_TOKEN", "t0ken")
        .arg("run")
        .arg(&p)
        .args(["--format", "csv"])
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "src,n,ids,price,even\ncursor,25,325,487.5,\nflaky,25,325,,\nheader,25,325,,\nlink,25,325,487.5,12\npage,25,325,487.5,"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed transiently; retrying"), "{stderr}");
    assert!(!stderr.contains("t0ken"), "{stderr}");

    // The example pipeline against the same server.
    let out_dir = tempfile::tempdir().unwrap();
    let out = flowengine()
        .env("FLOWENGINE_SECRET_API_TOKEN", "t0ken")
        .args(["run", "--format", "csv", "--var"])
        .arg(format!("API_BASE={base}"))
        .arg("--var")
        .arg(format!("OUT_DIR={}", out_dir.path().display()))
        .arg(common::repo("sql-examples/rest_api.sql"))
        .assert()
        .success()
        .get_output()
        .clone();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "items,total_price\n25,487.5"
    );
    assert_eq!(
        common::parquet_rows(&out_dir.path().join("rest_api/items.parquet")),
        25
    );

    // A wrong token is a permanent failure: not retried, named with its status.
    let denied = write_pipeline(
        dir.path(),
        "denied.sql",
        &format!(
            "CREATE EXTERNAL TABLE x STORED AS HTTP_JSON LOCATION '{base}/next' OPTIONS ('records_path' 'data.items', {auth});"
        ),
    );
    flowengine()
        .env("FLOWENGINE_SECRET_API_TOKEN", "wrong")
        .arg("run")
        .arg(&denied)
        .assert()
        .failure()
        .stderr(predicate::str::contains("HTTP 401"))
        .stderr(predicate::str::contains("retrying").not())
        .stderr(predicate::str::contains("wrong").not());
}

#[test]
fn webhook_sinks() {
    let server = start();
    let base = format!("http://127.0.0.1:{}", server.1);
    let dir = tempfile::tempdir().unwrap();
    let auth = "'header.authorization' 'Bearer ${secret:API_TOKEN}'";
    let cols = "(id BIGINT, message VARCHAR, amount DOUBLE)";
    let sql = format!(
        "CREATE EXTERNAL TABLE hook {cols} STORED AS WEBHOOK LOCATION '{base}/hook'
  OPTIONS ('batch_size' '1000', {auth});
CREATE EXTERNAL TABLE hook_nd {cols} STORED AS WEBHOOK LOCATION '{base}/hook-nd'
  OPTIONS ('body' 'ndjson', 'batch_size' '40', {auth});
CREATE EXTERNAL TABLE hook_wrapped {cols} STORED AS WEBHOOK LOCATION '{base}/hook-wrapped'
  OPTIONS ('records_key' 'rows', {auth});
CREATE EXTERNAL TABLE hook_flaky {cols} STORED AS WEBHOOK LOCATION '{base}/hook-flaky'
  OPTIONS ('retry_backoff_ms' '20', {auth});
CREATE VIEW src AS SELECT value AS id, 'msg ' || value AS message,
  CASE WHEN value % 10 = 0 THEN NULL ELSE value * 1.5 END AS amount FROM generate_series(1, 2500);
INSERT INTO hook SELECT * FROM src;
INSERT INTO hook_nd SELECT * FROM src WHERE id <= 100;
INSERT INTO hook_wrapped SELECT * FROM src WHERE id <= 10;
INSERT INTO hook_flaky SELECT * FROM src WHERE id <= 5;
CREATE EXTERNAL TABLE received (id BIGINT, message VARCHAR, amount DOUBLE, _path VARCHAR, _key VARCHAR, _ctype VARCHAR)
  STORED AS HTTP_JSON LOCATION '{base}/received' OPTIONS ({auth});
SELECT _path, _ctype, count(*) AS n, count(DISTINCT _key) AS requests, sum(id) AS ids,
  count(amount) AS amounts, sum(amount) AS total,
  sum(CASE WHEN message = 'msg ' || id THEN 1 ELSE 0 END) AS messages
FROM received GROUP BY _path, _ctype ORDER BY _path;"
    );
    let p = write_pipeline(dir.path(), "hooks.sql", &sql);
    let out = flowengine()
        .env("FLOWENGINE_SECRET_API_TOKEN", "t0ken")
        .arg("run")
        .arg(&p)
        .args(["--format", "csv"])
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Every row arrived once, NULLs as null; 1000-row batches, 40-row ndjson batches.
    assert_eq!(
        stdout.trim(),
        "_path,_ctype,n,requests,ids,amounts,total,messages
/hook,application/json,2500,3,3126250,2250,4218750.0,2500
/hook-flaky,application/json,5,1,15,5,22.5,5
/hook-nd,application/x-ndjson,100,3,5050,90,6750.0,100
/hook-wrapped,application/json,10,1,55,9,67.5,10",
        "{stderr}"
    );
    assert!(stderr.contains("failed transiently; retrying"), "{stderr}");
    assert!(!stderr.contains("t0ken"), "{stderr}");

    // The flaky hook was tried three times with one idempotency key; a rejected batch is not
    // retried, and the error says what was delivered before it.
    let denied = write_pipeline(
        dir.path(),
        "denied.sql",
        &format!(
            "CREATE EXTERNAL TABLE denied {cols} STORED AS WEBHOOK LOCATION '{base}/hook-denied'
  OPTIONS ('batch_size' '3', {auth});
INSERT INTO denied SELECT value, 'x', 1.0 FROM generate_series(1, 5);"
        ),
    );
    flowengine()
        .env("FLOWENGINE_SECRET_API_TOKEN", "t0ken")
        .arg("run")
        .arg(&denied)
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "batch 1 (3 rows) failed after 0 rows were delivered",
        ))
        .stderr(predicate::str::contains("HTTP 400"))
        .stderr(predicate::str::contains("retrying").not());
    let attempts = write_pipeline(
        dir.path(),
        "attempts.sql",
        &format!(
            "CREATE EXTERNAL TABLE attempts (path VARCHAR, \"key\" VARCHAR, status BIGINT)
  STORED AS HTTP_JSON LOCATION '{base}/attempts' OPTIONS ({auth});
SELECT path, count(*) AS tries, count(DISTINCT \"key\") AS keys, max(status) AS last
FROM attempts WHERE path IN ('/hook-flaky', '/hook-denied') GROUP BY path ORDER BY path;"
        ),
    );
    flowengine()
        .env("FLOWENGINE_SECRET_API_TOKEN", "t0ken")
        .args(["run", "--format", "csv"])
        .arg(&attempts)
        .assert()
        .success()
        .stdout("path,tries,keys,last\n/hook-denied,1,1,400\n/hook-flaky,3,1,503\n");

    // A webhook is write-only; it needs declared columns.
    let read = write_pipeline(
        dir.path(),
        "read.sql",
        &format!(
            "CREATE EXTERNAL TABLE h {cols} STORED AS WEBHOOK LOCATION '{base}/hook';\nSELECT * FROM h;"
        ),
    );
    flowengine()
        .arg("run")
        .arg(&read)
        .assert()
        .failure()
        .stderr(predicate::str::contains("is a sink"));
    let undeclared = write_pipeline(
        dir.path(),
        "undeclared.sql",
        &format!("CREATE EXTERNAL TABLE h STORED AS WEBHOOK LOCATION '{base}/hook';"),
    );
    flowengine()
        .arg("run")
        .arg(&undeclared)
        .assert()
        .failure()
        .stderr(predicate::str::contains("declare the columns"));

    // The example pipeline against the same server.
    flowengine()
        .env("FLOWENGINE_SECRET_API_TOKEN", "t0ken")
        .args(["run", "--var"])
        .arg(format!("HOOK_URL={base}/hook-example"))
        .arg(common::repo("sql-examples/webhook.sql"))
        .assert()
        .success();
    let check = write_pipeline(
        dir.path(),
        "check.sql",
        &format!(
            "CREATE EXTERNAL TABLE received (region VARCHAR, orders BIGINT, revenue DOUBLE, _path VARCHAR)
  STORED AS HTTP_JSON LOCATION '{base}/received' OPTIONS ({auth});
SELECT count(*) AS n, sum(orders) AS orders FROM received WHERE _path = '/hook-example' AND region IN ('paid', 'shipped', 'cancelled', 'refunded');"
        ),
    );
    flowengine()
        .env("FLOWENGINE_SECRET_API_TOKEN", "t0ken")
        .args(["run", "--format", "csv"])
        .arg(&check)
        .assert()
        .success()
        .stdout("n,orders\n4,1000\n");
}
