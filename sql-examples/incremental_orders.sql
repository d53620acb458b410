-- The README's pipeline: a quality check, an incremental view (each run reads only the orders
-- added since the last successful run), a Parquet sink and a summary.
CREATE EXTERNAL TABLE orders STORED AS CSV LOCATION '${PIPELINE_DIR}/data/orders.csv';
CREATE CHECK positive_quantity ON orders EXPECT quantity > 0;          -- stops the run before any write
CREATE INCREMENTAL VIEW new_orders ON orders BY order_id;              -- only rows past the last run
COPY (SELECT * FROM new_orders WHERE status = 'paid') TO '${OUT_DIR}/paid/' STORED AS PARQUET;
SELECT status, count(*) FROM orders GROUP BY status;                   -- a trailing query is printed
