-- Run by: tests/object_stores.rs (it serves sql-examples/data/ over HTTP on a free port).
-- HTTP(S) as a source: a CSV file published by a web server is a table; requests that fail
-- transiently are retried with backoff.
--
--   flowengine run sql-examples/http_file.sql --var BASE_URL=https://example.com/exports

CREATE EXTERNAL TABLE products STORED AS CSV LOCATION '${BASE_URL}/products.csv'
OPTIONS ('http.timeout' '30s', 'retry.max_retries' '3');

SELECT category, count(*) AS products, round(avg(list_price), 2) AS avg_price
FROM products GROUP BY category ORDER BY category;
