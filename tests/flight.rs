//! Flight SQL end to end with arrow-rs's own client (`FlightSqlServiceClient`) against a real
//! `flowengine serve` process.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow_flight::sql::{
    CommandGetDbSchemas, CommandGetPrimaryKeys, CommandGetTables, CommandStatementIngest,
    CommandStatementQuery, ProstMessageExt, SqlInfo, TableDefinitionOptions, TableExistsOption,
    TableNotExistOption,
};
use arrow_flight::{
    Action, CancelFlightInfoRequest, CancelFlightInfoResult, FlightDescriptor, Ticket,
};
use common::flight::*;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_query_streams_results_and_schema_matches_flight_info() {
    let server = start();
    let mut c = client(&server).await;
    let info = c
        .execute(
            "SELECT country, orders FROM revenue_by_country ORDER BY country".into(),
            None,
        )
        .await
        .unwrap();
    let announced = info.clone().try_decode_schema().unwrap();
    let batches = fetch(&mut c, info).await.unwrap();
    assert!(rows(&batches) > 3);
    assert_eq!(batches[0].schema().as_ref(), &announced);
    let total: i64 = batches
        .iter()
        .map(|b| {
            b.column(1)
                .as_primitive::<Int64Type>()
                .iter()
                .flatten()
                .sum::<i64>()
        })
        .sum();
    // Paid orders only, every one counted once.
    let paid = query(&mut c, "SELECT count(*) FROM orders WHERE status = 'paid'")
        .await
        .unwrap();
    assert_eq!(
        paid[0].column(0).as_primitive::<Int64Type>().value(0),
        total
    );

    // Zero rows: the schema still arrives and equals the announced one.
    let info = c
        .execute(
            "SELECT order_id, status FROM orders WHERE false".into(),
            None,
        )
        .await
        .unwrap();
    let announced = info.clone().try_decode_schema().unwrap();
    let stream = c
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap();
    let mut stream = stream;
    while stream.next().await.is_some() {}
    assert_eq!(stream.schema().unwrap().as_ref(), &announced);

    // Dictionary columns are hydrated, in the announcement and in the stream alike.
    let info = c
        .execute(
            "SELECT arrow_cast(status, 'Dictionary(Int32, Utf8)') AS s FROM orders LIMIT 3".into(),
            None,
        )
        .await
        .unwrap();
    let announced = info.clone().try_decode_schema().unwrap();
    assert_eq!(announced.field(0).data_type(), &DataType::Utf8);
    let batches = fetch(&mut c, info).await.unwrap();
    assert_eq!(batches[0].schema().field(0).data_type(), &DataType::Utf8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_bind_parameters_and_handles_are_stateless() {
    let server = start();
    let mut c = client(&server).await;
    let mut stmt = c
        .prepare(
            "SELECT count(*) AS n FROM orders WHERE quantity >= $1 AND status = $2".into(),
            None,
        )
        .await
        .unwrap();
    let params = stmt.parameter_schema().unwrap().clone();
    assert_eq!(params.fields().len(), 2);
    assert_eq!(stmt.dataset_schema().unwrap().field(0).name(), "n");

    let param_schema = Arc::new(Schema::new(vec![
        Field::new("$1", DataType::Int64, true),
        Field::new("$2", DataType::Utf8, true),
    ]));
    let mut counts = Vec::new();
    for q in [1i64, 3, 5] {
        let batch = RecordBatch::try_new(
            Arc::clone(&param_schema),
            vec![
                Arc::new(Int64Array::from(vec![q])),
                Arc::new(StringArray::from(vec!["paid"])),
            ],
        )
        .unwrap();
        stmt.set_parameters(batch).unwrap();
        let info = stmt.execute().await.unwrap();
        let batches = fetch(&mut c, info).await.unwrap();
        counts.push(batches[0].column(0).as_primitive::<Int64Type>().value(0));
    }
    let direct = query(
        &mut c,
        "SELECT count(*) FROM orders WHERE quantity >= 3 AND status = 'paid'",
    )
    .await
    .unwrap();
    assert_eq!(
        counts[1],
        direct[0].column(0).as_primitive::<Int64Type>().value(0)
    );
    assert!(counts[0] > counts[1] && counts[1] > counts[2], "{counts:?}");

    // Two statements prepared from the same SQL with different bindings do not interfere.
    let sql = "SELECT $1 + 1 AS v";
    let mut a = c.prepare(sql.into(), None).await.unwrap();
    let mut b = c.prepare(sql.into(), None).await.unwrap();
    let one = |v: i64| {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, true)])),
            vec![Arc::new(Int64Array::from(vec![v]))],
        )
        .unwrap()
    };
    a.set_parameters(one(10)).unwrap();
    b.set_parameters(one(20)).unwrap();
    let ia = a.execute().await.unwrap();
    let ib = b.execute().await.unwrap();
    let rb = fetch(&mut c, ib).await.unwrap();
    let ra = fetch(&mut c, ia).await.unwrap();
    assert_eq!(ra[0].column(0).as_primitive::<Int64Type>().value(0), 11);
    assert_eq!(rb[0].column(0).as_primitive::<Int64Type>().value(0), 21);

    // A wrong parameter type is a clear INVALID_ARGUMENT.
    let mut bad = c
        .prepare("SELECT * FROM orders WHERE quantity = $1".into(), None)
        .await
        .unwrap();
    bad.set_parameters(
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("$1", DataType::Utf8, true)])),
            vec![Arc::new(StringArray::from(vec!["not a number"]))],
        )
        .unwrap(),
    )
    .unwrap();
    let err = status(bad.execute().await.unwrap_err());
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("$1"), "{}", err.message());
    a.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_ddl_dml_and_prepared_updates_return_counts() {
    let server = start();
    let mut c = client(&server).await;
    assert_eq!(
        c.execute_update("CREATE TABLE t (id BIGINT, name VARCHAR)".into(), None)
            .await
            .unwrap(),
        0
    );
    let n = c
        .execute_update(
            "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(n, 3);
    // Prepared update with parameters.
    let mut stmt = c
        .prepare("INSERT INTO t VALUES ($1, $2)".into(), None)
        .await
        .unwrap();
    stmt.set_parameters(
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("$1", DataType::Int64, true),
                Field::new("$2", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![4, 5])),
                Arc::new(StringArray::from(vec!["d", "e"])),
            ],
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(stmt.execute_update().await.unwrap(), 2);
    // A prepared "update" that is really a SELECT (as JDBC sends) runs and counts its rows.
    let mut sel = c.prepare("SELECT * FROM t".into(), None).await.unwrap();
    assert_eq!(sel.execute_update().await.unwrap(), 5);
    // GetSchema of a write only plans it.
    let cmd = CommandStatementQuery {
        query: "INSERT INTO t VALUES (9, 'z')".into(),
        transaction_id: None,
    };
    let mut raw = c.inner().clone();
    let schema = raw
        .get_schema(FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec()))
        .await
        .unwrap()
        .into_inner();
    let schema = Schema::try_from(&schema).unwrap();
    assert_eq!(schema.field(0).name(), "count");
    assert_eq!(sel.execute_update().await.unwrap(), 5);
    // Tables created by clients are visible to later queries, and views too.
    c.execute_update(
        "CREATE VIEW tv AS SELECT name FROM t WHERE id > 3".into(),
        None,
    )
    .await
    .unwrap();
    let batches = query(&mut c, "SELECT name FROM tv ORDER BY name")
        .await
        .unwrap();
    assert_eq!(rows(&batches), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_ingest_creates_appends_replaces_and_handles_big_uploads() {
    let server = start();
    let mut c = client(&server).await;
    // 2 million rows (~32 MB): more than tonic's default 4 MB message limit.
    let n = 2_000_000i64;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from_iter_values(0..n)),
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| i * 2))),
        ],
    )
    .unwrap();
    let ingest = |if_exists: TableExistsOption| CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: TableNotExistOption::Create.into(),
            if_exists: if_exists.into(),
        }),
        table: "ingested".into(),
        schema: None,
        catalog: None,
        temporary: false,
        transaction_id: None,
        options: Default::default(),
    };
    let b = batch.clone();
    let added = c
        .execute_ingest(
            ingest(TableExistsOption::Fail),
            futures::stream::once(async move { Ok(b) }),
        )
        .await
        .unwrap();
    assert_eq!(added, n);
    // Existing table + fail => ALREADY_EXISTS.
    let b = batch.slice(0, 10);
    let err = c
        .execute_ingest(
            ingest(TableExistsOption::Fail),
            futures::stream::once(async move { Ok(b) }),
        )
        .await
        .unwrap_err();
    assert_eq!(status(err).code(), Code::AlreadyExists);
    let b = batch.slice(0, 10);
    c.execute_ingest(
        ingest(TableExistsOption::Append),
        futures::stream::once(async move { Ok(b) }),
    )
    .await
    .unwrap();
    let total = query(&mut c, "SELECT count(*), sum(v) FROM ingested")
        .await
        .unwrap();
    assert_eq!(
        total[0].column(0).as_primitive::<Int64Type>().value(0),
        n + 10
    );
    let b = batch.slice(0, 7);
    c.execute_ingest(
        ingest(TableExistsOption::Replace),
        futures::stream::once(async move { Ok(b) }),
    )
    .await
    .unwrap();
    let total = query(&mut c, "SELECT count(*) FROM ingested")
        .await
        .unwrap();
    assert_eq!(total[0].column(0).as_primitive::<Int64Type>().value(0), 7);
    // A large result comes back in many messages, each under the limit.
    let big = query(&mut c, "SELECT * FROM range(2000000)").await.unwrap();
    assert_eq!(rows(&big), 2_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_commands_decode_through_dispatch() {
    let server = start();
    let mut c = client(&server).await;
    let info = c.get_catalogs().await.unwrap();
    let catalogs = fetch(&mut c, info).await.unwrap();
    let names: Vec<String> = catalogs[0]
        .column(0)
        .as_string::<i32>()
        .iter()
        .flatten()
        .map(String::from)
        .collect();
    assert!(names.contains(&"datafusion".to_string()), "{names:?}");

    let info = c
        .get_db_schemas(CommandGetDbSchemas {
            catalog: Some("datafusion".into()),
            db_schema_filter_pattern: Some("pub%".into()),
        })
        .await
        .unwrap();
    let schemas = fetch(&mut c, info).await.unwrap();
    assert_eq!(schemas[0].column(1).as_string::<i32>().value(0), "public");

    let info = c
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: Some("public".into()),
            table_name_filter_pattern: Some("ord%".into()),
            table_types: vec![],
            include_schema: true,
        })
        .await
        .unwrap();
    let tables = fetch(&mut c, info).await.unwrap();
    assert_eq!(rows(&tables), 1);
    assert_eq!(tables[0].column(2).as_string::<i32>().value(0), "orders");
    assert_eq!(tables[0].column(3).as_string::<i32>().value(0), "TABLE");
    let schema_bytes = tables[0].column(4).as_binary::<i32>().value(0);
    let schema = arrow::ipc::convert::try_schema_from_ipc_buffer(schema_bytes).unwrap();
    assert!(schema.field_with_name("unit_price").is_ok());

    let info = c
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: None,
            table_name_filter_pattern: None,
            table_types: vec!["VIEW".into()],
            include_schema: false,
        })
        .await
        .unwrap();
    let views = fetch(&mut c, info).await.unwrap();
    let view_names: Vec<&str> = views
        .iter()
        .flat_map(|b| b.column(2).as_string::<i32>().iter().flatten())
        .collect();
    assert!(view_names.contains(&"revenue_by_country"), "{view_names:?}");

    let info = c.get_table_types().await.unwrap();
    assert_eq!(rows(&fetch(&mut c, info).await.unwrap()), 3);

    let info = c.get_sql_info(vec![]).await.unwrap();
    let all = fetch(&mut c, info).await.unwrap();
    assert!(rows(&all) > 80, "SqlInfo answers every id: {}", rows(&all));
    let info = c
        .get_sql_info(vec![
            SqlInfo::FlightSqlServerName,
            SqlInfo::SqlIdentifierQuoteChar,
            SqlInfo::SqlTransactionsSupported,
        ])
        .await
        .unwrap();
    assert_eq!(rows(&fetch(&mut c, info).await.unwrap()), 3);

    let info = c
        .get_xdbc_type_info(arrow_flight::sql::CommandGetXdbcTypeInfo { data_type: None })
        .await
        .unwrap();
    assert!(rows(&fetch(&mut c, info).await.unwrap()) >= 10);

    let info = c
        .get_primary_keys(CommandGetPrimaryKeys {
            catalog: None,
            db_schema: None,
            table: "orders".into(),
        })
        .await
        .unwrap();
    assert_eq!(rows(&fetch(&mut c, info).await.unwrap()), 0);
    let info = c
        .get_exported_keys(arrow_flight::sql::CommandGetExportedKeys {
            catalog: None,
            db_schema: None,
            table: "orders".into(),
        })
        .await
        .unwrap();
    assert_eq!(rows(&fetch(&mut c, info).await.unwrap()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_codes_and_the_server_stays_up() {
    let server = start();
    let mut c = client(&server).await;
    let code = |r: Result<Vec<RecordBatch>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(code(query(&mut c, "SELEC 1").await), Code::InvalidArgument);
    assert_eq!(
        code(query(&mut c, "SELECT * FROM nope").await),
        Code::NotFound
    );
    // Dynamic URL tables are off on the server.
    let err = query(&mut c, "SELECT * FROM '/etc/passwd'")
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert!(!err.message().contains("root:"), "{}", err.message());
    // So are the file-reading table functions of local commands.
    for sql in [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_json('/etc/passwd')",
    ] {
        let err = query(&mut c, sql).await.unwrap_err();
        assert!(
            err.message().contains("not found"),
            "{sql}: {}",
            err.message()
        );
    }
    // SET is limited to an allow-list.
    let err = c
        .execute_update("SET datafusion.runtime.memory_limit = '100G'".into(), None)
        .await
        .unwrap_err();
    assert_eq!(status(err).code(), Code::PermissionDenied);
    c.execute_update("SET datafusion.execution.time_zone = '+02:00'".into(), None)
        .await
        .unwrap();
    // Transactions are declared unsupported and refused cleanly.
    let err = c.begin_transaction().await.unwrap_err();
    assert_eq!(status(err).code(), Code::Unimplemented);
    // Malformed and foreign tickets.
    let err = c.do_get(Ticket::new("garbage")).await.unwrap_err();
    assert_eq!(status(err).code(), Code::InvalidArgument);
    let foreign = arrow_flight::sql::TicketStatementQuery {
        statement_handle: "FETK1:someoneelse:abc".into(),
    };
    let err = c
        .do_get(Ticket::new(foreign.as_any().encode_to_vec()))
        .await
        .unwrap_err();
    assert_eq!(status(err).code(), Code::NotFound);
    // Unknown command in a descriptor, unknown action.
    let mut raw = c.inner().clone();
    let err = raw
        .get_flight_info(FlightDescriptor::new_cmd("not a command"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = raw
        .do_action(Action::new("NoSuchAction", ""))
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    // A ticket is single-use.
    let info = c.execute("SELECT 1".into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let first: Vec<_> = c
        .do_get(ticket.clone())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(rows(&first), 1);
    assert_eq!(
        status(c.do_get(ticket).await.unwrap_err()).code(),
        Code::NotFound
    );
    // Still serving.
    assert_eq!(rows(&query(&mut c, "SELECT 1").await.unwrap()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_query_is_an_internal_error_not_a_crash() {
    let mut server = start();
    let mut c = client(&server).await;
    // Reading this file's footer trips an arithmetic overflow panic inside parquet-rs.
    let err = c
        .execute_update(
            format!(
                "CREATE EXTERNAL TABLE corrupt STORED AS PARQUET LOCATION '{}'",
                common::bad("corrupt.parquet").display()
            ),
            None,
        )
        .await
        .unwrap_err();
    let err = status(err);
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(server.alive());
    assert_eq!(rows(&query(&mut c, "SELECT 1").await.unwrap()), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_flight_info_and_dropped_streams_stop_queries() {
    let server = start();
    let mut c = client(&server).await;
    // A query that would run for a long time.
    let slow = "SELECT count(*) FROM range(400000000) a WHERE a.value % 7 = 3";
    let info = c.execute(slow.into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut raw = c.inner().clone();
    let fetch_task = tokio::spawn({
        let mut c2 = client(&server).await;
        async move {
            let stream = c2.do_get(ticket).await.map_err(status)?;
            stream.try_collect::<Vec<_>>().await.map_err(status)
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let body = CancelFlightInfoRequest::new(info).encode_to_vec();
    let mut results = raw
        .do_action(Action::new("CancelFlightInfo", body))
        .await
        .unwrap()
        .into_inner();
    let result = results.next().await.unwrap().unwrap();
    let result = CancelFlightInfoResult::decode(&*result.body).unwrap();
    assert_eq!(result.status, arrow_flight::CancelStatus::Cancelled as i32);
    let started = Instant::now();
    let outcome = fetch_task.await.unwrap();
    assert_eq!(outcome.unwrap_err().code(), Code::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(10));
    wait_idle(&server).await;

    // Dropping the stream also stops the query.
    let info = c.execute(slow.into(), None).await.unwrap();
    let mut stream = c
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    drop(stream);
    wait_idle(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_flight_info_submits_then_fetches() {
    let server = start();
    let c = client(&server).await;
    let mut raw = c.inner().clone();
    let cmd = CommandStatementQuery {
        query: "SELECT count(*) AS n FROM range(30000000) WHERE value % 3 = 0".into(),
        transaction_id: None,
    };
    let started = Instant::now();
    let mut poll = raw
        .poll_flight_info(FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec()))
        .await
        .unwrap()
        .into_inner();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "submission must not block"
    );
    let mut polls = 1;
    while let Some(descriptor) = poll.flight_descriptor.clone() {
        assert!(poll.info.as_ref().unwrap().endpoint.is_empty());
        tokio::time::sleep(Duration::from_millis(50)).await;
        poll = raw.poll_flight_info(descriptor).await.unwrap().into_inner();
        polls += 1;
        assert!(polls < 2000);
    }
    assert_eq!(poll.progress, Some(1.0));
    let info = poll.info.unwrap();
    let mut c = client(&server).await;
    let batches = fetch(&mut c, info).await.unwrap();
    assert_eq!(
        batches[0].column(0).as_primitive::<Int64Type>().value(0),
        10_000_000
    );
}
