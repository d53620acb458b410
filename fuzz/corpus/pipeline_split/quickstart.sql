-- Quickstart: the embedded default. Reads the small shop dataset shipped in sql-examples/data/
-- (CSV), joins and transforms it, writes Parquet, and prints a revenue summary per country.
-- Needs: nothing (no server, no download). Output goes to ${OUT_DIR}, default ./out.
--
--   flowengine run sql-examples/quickstart.sql [--var OUT_DIR=/tmp/fe]

CREATE EXTERNAL TABLE orders
STORED AS CSV
LOCATION '${PIPELINE_DIR}/data/orders.csv'
OPTIONS ('format.has_header' 'true');

CREATE EXTERNAL TABLE customers
STORED AS CSV
LOCATION '${PIPELINE_DIR}/data/customers.csv';

-- Revenue per order line, without cancelled orders.
CREATE VIEW order_facts AS
SELECT o.order_id,
       CAST(o.order_date AS DATE)              AS order_date,
       c.country,
       o.quantity,
       CAST(o.quantity * o.unit_price AS DECIMAL(12, 2)) AS revenue,
       o.status
FROM orders o
JOIN customers c ON c.customer_id = o.customer_id
WHERE o.status <> 'cancelled';

COPY (SELECT * FROM order_facts ORDER BY order_id)
TO '${OUT_DIR:-out}/quickstart/order_facts.parquet'
STORED AS PARQUET;

-- Read the Parquet back: what was written is what is summarised.
CREATE EXTERNAL TABLE order_facts_parquet
STORED AS PARQUET
LOCATION '${OUT_DIR:-out}/quickstart/order_facts.parquet';

SELECT country,
       count(*)     AS orders,
       sum(quantity) AS items,
       sum(revenue) AS revenue
FROM order_facts_parquet
GROUP BY country
ORDER BY revenue DESC;
