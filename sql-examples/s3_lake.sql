-- Run by: tests/object_stores.rs (it starts an S3-compatible server and sets AWS_*).
-- S3 as a sink and a source: write the shop's orders to a bucket as hive-partitioned Parquet,
-- then read the partitioned dataset back with listing, partition pruning and a glob.
-- Needs: an S3 bucket ${BUCKET} and credentials in the environment (AWS_ACCESS_KEY_ID,
-- AWS_SECRET_ACCESS_KEY, AWS_REGION; AWS_ENDPOINT_URL for MinIO, moto or other S3-compatible servers).
--
--   flowengine run sql-examples/s3_lake.sql --var BUCKET=my-bucket

CREATE EXTERNAL TABLE orders_csv STORED AS CSV LOCATION '${PIPELINE_DIR}/data/orders.csv';

COPY (SELECT order_id, customer_id, quantity, unit_price, status, to_char(order_date, '%Y-%m') AS month
      FROM orders_csv)
TO 's3://${BUCKET}/shop/orders/' STORED AS PARQUET PARTITIONED BY (month);

CREATE EXTERNAL TABLE lake_orders STORED AS PARQUET LOCATION 's3://${BUCKET}/shop/orders/';

SELECT month, count(*) AS orders, sum(quantity) AS items
FROM lake_orders WHERE month >= '2024-03' GROUP BY month ORDER BY month;
