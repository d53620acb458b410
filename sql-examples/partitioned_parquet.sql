-- Partitioned Parquet output: writes orders as a hive-partitioned dataset (one directory per
-- month and status), then reads it back as a partitioned table and prunes by partition.
-- Needs: nothing. Output goes to ${OUT_DIR}, default ./out.

CREATE EXTERNAL TABLE orders
STORED AS CSV
LOCATION '${PIPELINE_DIR}/data/orders.csv';

COPY (
    SELECT order_id, customer_id, product_id, quantity, unit_price,
           CAST(order_date AS DATE) AS order_date,
           to_char(CAST(order_date AS DATE), '%Y-%m') AS order_month,
           status
    FROM orders
)
TO '${OUT_DIR:-out}/orders_by_month/'
STORED AS PARQUET
PARTITIONED BY (order_month, status);

-- Partition columns are discovered from the directory names.
CREATE EXTERNAL TABLE orders_by_month
STORED AS PARQUET
LOCATION '${OUT_DIR:-out}/orders_by_month/';

-- Only the 2024-03 directories are read.
SELECT order_month, status, count(*) AS orders, sum(quantity) AS items
FROM orders_by_month
WHERE order_month = '2024-03'
GROUP BY order_month, status
ORDER BY status;
