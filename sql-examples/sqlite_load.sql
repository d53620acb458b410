-- SQLite as a sink and a source: build a SQLite database file from the shop's CSVs (tables
-- created from the declared columns), then query it like any other table.
-- Needs: nothing (SQLite is a file). Output goes to ${OUT_DIR}, default ./out.
--
--   flowengine run sql-examples/sqlite_load.sql [--var OUT_DIR=/tmp/fe]

CREATE EXTERNAL TABLE customers_csv STORED AS CSV LOCATION '${PIPELINE_DIR}/data/customers.csv';

CREATE EXTERNAL TABLE lite_customers (
    customer_id BIGINT NOT NULL,
    name VARCHAR,
    country VARCHAR,
    signup_date DATE,
    PRIMARY KEY (customer_id)
)
STORED AS SQLITE
LOCATION 'customers'
OPTIONS ('path' '${OUT_DIR:-out}/shop.sqlite', 'on_conflict' 'upsert:customer_id');

INSERT INTO lite_customers
SELECT customer_id, name, country, CAST(signup_date AS DATE) FROM customers_csv;

SELECT country, count(*) AS customers FROM lite_customers GROUP BY country ORDER BY customers DESC, country LIMIT 5;
