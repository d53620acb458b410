//! REST APIs as tables (`STORED AS HTTP_JSON`) against a local HTTP server started by the test:
//! next-link (body and `Link` header), cursor and page-number pagination, records at a JSON
//! path, an auth header from a secret, declared and inferred schemas, retries on 503.

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
        if u.path == "/page":
            p = int(q.get("p", 1))
            return self.send(200, {"rows": ITEMS[(p - 1) * 10:p * 10]})
        self.send(404, {"error": "no such path"})
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
