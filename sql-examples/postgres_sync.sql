-- PostgreSQL as a sink and a source: load the shop's orders into a PostgreSQL table (created
-- from the declared columns if missing; upserted on the key, so reruns are idempotent), then
-- read it back joined with a local CSV and export a Parquet report.
-- Needs: PostgreSQL (default postgresql://postgres@127.0.0.1:5432/test; --var PG_URL=... or
-- put the password in FLOWENGINE_SECRET_PG_PASS and write postgresql://user:${secret:PG_PASS}@host/db).
--
--   flowengine run sql-examples/postgres_sync.sql [--var OUT_DIR=/tmp/fe]

CREATE EXTERNAL TABLE orders_csv STORED AS CSV LOCATION '${PIPELINE_DIR}/data/orders.csv';
CREATE EXTERNAL TABLE customers STORED AS CSV LOCATION '${PIPELINE_DIR}/data/customers.csv';

-- The sink: columns declared, so the table is created when it does not exist yet.
CREATE EXTERNAL TABLE pg_orders (
    order_id BIGINT NOT NULL,
    customer_id BIGINT,
    quantity INT,
    unit_price DECIMAL(10, 2),
    order_date DATE,
    status VARCHAR,
    PRIMARY KEY (order_id)
)
STORED AS POSTGRES
LOCATION 'flowengine_example_orders'
OPTIONS ('connection' '${PG_URL:-postgresql://postgres@127.0.0.1:5432/test}',
         'on_conflict' 'upsert:order_id');

INSERT INTO pg_orders
SELECT order_id, customer_id, quantity, CAST(unit_price AS DECIMAL(10, 2)),
       CAST(order_date AS DATE), status
FROM orders_csv;

-- The source: filters and the projection run in PostgreSQL; the join with the CSV here.
COPY (
    SELECT c.country, count(*) AS orders, sum(o.quantity * o.unit_price) AS revenue
    FROM pg_orders o JOIN customers c ON c.customer_id = o.customer_id
    WHERE o.status = 'paid'
    GROUP BY c.country ORDER BY revenue DESC
) TO '${OUT_DIR:-out}/postgres_sync/revenue_by_country.parquet';

SELECT count(*) AS rows_in_postgres FROM pg_orders;
