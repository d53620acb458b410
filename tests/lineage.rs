//! Lineage end to end: `flowengine lineage` (text, DOT, JSON) derives table- and column-level
//! lineage from the plans, through views, joins, aggregates and subqueries, without writing;
//! `flowengine run` with `FLOWENGINE_LINEAGE_FILE` emits one OpenLineage event per write, and
//! with `FLOWENGINE_LINEAGE_URL` POSTs each to an HTTP endpoint (a local server here).

mod common;

use common::*;

const PIPELINE: &str = "CREATE EXTERNAL TABLE orders (id INT, customer_id INT, amount DOUBLE, status VARCHAR) STORED AS CSV LOCATION 'orders.csv';\n\
CREATE EXTERNAL TABLE customers (id INT, country VARCHAR, vip BOOLEAN) STORED AS CSV LOCATION 'customers.csv';\n\
CREATE VIEW paid AS SELECT o.id, o.amount * 1.2 AS gross, c.country FROM orders o JOIN customers c ON o.customer_id = c.id WHERE o.status = 'paid';\n\
CREATE TABLE by_country AS SELECT country, sum(gross) AS revenue, count(*) AS n FROM paid GROUP BY country;\n\
COPY (SELECT id, upper(status) AS status FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE vip)) TO 'out/vip_orders.parquet';\n\
SELECT * FROM by_country;\n";

fn setup() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("orders.csv"),
        "id,customer_id,amount,status\n1,10,5.0,paid\n2,11,7.5,open\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("customers.csv"),
        "id,country,vip\n10,FR,true\n11,DE,false\n",
    )
    .unwrap();
    write_pipeline(tmp.path(), "p.sql", PIPELINE);
    tmp
}

#[test]
fn lineage_command_traces_columns_through_views_joins_and_aggregates() {
    let tmp = setup();
    let o = flowengine()
        .current_dir(tmp.path())
        .args(["lineage", "p.sql", "--format", "json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let items = v.as_array().unwrap();
    let find = |target: &str| {
        items
            .iter()
            .find(|i| i["target"].as_str().unwrap().contains(target))
            .unwrap_or_else(|| panic!("no lineage for {target}: {v:#}"))
    };
    let sources = |item: &serde_json::Value, col: &str| -> Vec<String> {
        item["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["column"] == col)
            .unwrap()["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                format!(
                    "{}.{}",
                    s["table"].as_str().unwrap(),
                    s["column"].as_str().unwrap()
                )
            })
            .collect()
    };
    // The aggregate table reads both tables through the view; each column keeps its sources.
    let agg = find("by_country");
    assert_eq!(agg["kind"], "table");
    assert_eq!(agg["inputs"], serde_json::json!(["customers", "orders"]));
    assert_eq!(sources(agg, "country"), vec!["customers.country"]);
    assert_eq!(sources(agg, "revenue"), vec!["orders.amount"]);
    assert_eq!(sources(agg, "n"), Vec::<String>::new());
    // The view itself.
    let view = find("paid");
    assert_eq!(view["kind"], "view");
    assert_eq!(sources(view, "gross"), vec!["orders.amount"]);
    // The COPY: a subquery's table is an input that feeds no column.
    let copy = find("vip_orders.parquet");
    assert_eq!(copy["kind"], "file");
    assert_eq!(copy["inputs"], serde_json::json!(["customers", "orders"]));
    assert_eq!(sources(copy, "status"), vec!["orders.status"]);
    assert_eq!(sources(copy, "id"), vec!["orders.id"]);
    // Nothing was written.
    assert!(!tmp.path().join("out").exists());

    let text = flowengine()
        .current_dir(tmp.path())
        .args(["lineage", "p.sql"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("table by_country"), "{text}");
    assert!(text.contains("  revenue <- orders.amount"), "{text}");
    let dot = flowengine()
        .current_dir(tmp.path())
        .args(["lineage", "p.sql", "--format", "dot"])
        .output()
        .unwrap();
    let dot = String::from_utf8_lossy(&dot.stdout);
    assert!(dot.starts_with("digraph lineage {"), "{dot}");
    assert!(
        dot.contains("\"orders.amount\" -> \"by_country.revenue\";"),
        "{dot}"
    );
}

#[test]
fn run_emits_openlineage_events_for_each_write() {
    let tmp = setup();
    let events = tmp.path().join("lineage.jsonl");
    let o = flowengine()
        .current_dir(tmp.path())
        .env("FLOWENGINE_STATE_DIR", tmp.path().join("state"))
        .env("FLOWENGINE_LINEAGE_FILE", &events)
        .args(["run", "p.sql"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // CREATE VIEW, CREATE TABLE AS and COPY: one event each.
    assert_eq!(lines.len(), 3, "{text}");
    for e in &lines {
        assert_eq!(e["eventType"], "COMPLETE");
        assert!(uuid_like(e["run"]["runId"].as_str().unwrap()), "{e}");
        assert!(e["job"]["name"].as_str().unwrap().ends_with(&format!(
            "p.sql#{}",
            3 + lines.iter().position(|x| x == e).unwrap()
        )));
    }
    let ctas = &lines[1];
    assert_eq!(ctas["outputs"][0]["name"], "by_country");
    assert_eq!(
        ctas["outputs"][0]["facets"]["columnLineage"]["fields"]["revenue"]["inputFields"][0],
        serde_json::json!({"namespace": "flowengine", "name": "orders", "field": "amount"})
    );
}

/// An OpenLineage endpoint: needs the bearer token `lk3y`, answers 503 to the first POST, and
/// appends each event it accepts (one JSON line) to the file `argv[2]`.
const RECEIVER: &str = r#"
import http.server, sys
state = {"fail": 1}
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Authorization") != "Bearer lk3y":
            code = 401
        elif state["fail"] > 0:
            state["fail"] -= 1
            code = 503
        else:
            with open(sys.argv[2], "ab") as f:
                f.write(body + b"\n")
            code = 201
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

#[test]
fn run_posts_openlineage_events_to_an_http_endpoint() {
    let tmp = setup();
    let received = tmp.path().join("received.jsonl");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(
        std::process::Command::new("python3")
            .args(["-c", RECEIVER, &port.to_string()])
            .arg(&received)
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "receiver did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = flowengine()
        .current_dir(tmp.path())
        .env("FLOWENGINE_STATE_DIR", tmp.path().join("state"))
        .env(
            "FLOWENGINE_LINEAGE_URL",
            format!("http://127.0.0.1:{port}/api/v1/lineage"),
        )
        .env("FLOWENGINE_LINEAGE_API_KEY", "${secret:LINEAGE_KEY}")
        .env("FLOWENGINE_SECRET_LINEAGE_KEY", "lk3y")
        .args(["run", "p.sql"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        !stderr.contains("lk3y") && !stderr.contains("not delivered"),
        "{stderr}"
    );
    // The first POST got a 503 and was retried: all three events arrived, once each.
    let text = std::fs::read_to_string(&received).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 3, "{text}");
    assert_eq!(events[1]["outputs"][0]["name"], "by_country");
    assert!(events.iter().all(|e| e["eventType"] == "COMPLETE"));

    // An endpoint that is down does not fail the run (its writes committed): a warning.
    let o = flowengine()
        .current_dir(tmp.path())
        .env("FLOWENGINE_STATE_DIR", tmp.path().join("state"))
        .env(
            "FLOWENGINE_LINEAGE_URL",
            "http://127.0.0.1:9/api/v1/lineage",
        )
        .args(["run", "p.sql"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("not delivered"), "{stderr}");
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|&c| c == '-').count() == 4
}
