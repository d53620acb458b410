-- Catalog for `flowengine serve`: what BI tools and notebooks see.
--   flowengine serve --catalog sql-examples/serve_catalog.sql
CREATE EXTERNAL TABLE orders
STORED AS CSV
LOCATION '${PIPELINE_DIR}/data/orders.csv';

CREATE EXTERNAL TABLE customers
STORED AS CSV
LOCATION '${PIPELINE_DIR}/data/customers.csv';

CREATE VIEW revenue_by_country AS
SELECT c.country,
       count(*) AS orders,
       round(sum(o.quantity * o.unit_price), 2) AS revenue
FROM orders o
JOIN customers c USING (customer_id)
WHERE o.status = 'paid'
GROUP BY c.country;
