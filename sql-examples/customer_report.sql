-- Join + window-function report: ranks customers by revenue within their country, with each
-- customer's share of the country total and a running monthly revenue per country.
-- Writes newline-delimited JSON and prints the top customers.
-- Needs: nothing. Output goes to ${OUT_DIR}, default ./out.

CREATE EXTERNAL TABLE orders    STORED AS CSV LOCATION '${PIPELINE_DIR}/data/orders.csv';
CREATE EXTERNAL TABLE customers STORED AS CSV LOCATION '${PIPELINE_DIR}/data/customers.csv';
CREATE EXTERNAL TABLE products  STORED AS CSV LOCATION '${PIPELINE_DIR}/data/products.csv';

CREATE VIEW customer_revenue AS
SELECT c.customer_id, c.name, c.country,
       count(DISTINCT o.order_id)                        AS orders,
       CAST(sum(o.quantity * o.unit_price) AS DECIMAL(12, 2)) AS revenue,
       count(DISTINCT p.category)                        AS categories
FROM orders o
JOIN customers c ON c.customer_id = o.customer_id
JOIN products  p ON p.product_id  = o.product_id
WHERE o.status IN ('paid', 'shipped')
GROUP BY c.customer_id, c.name, c.country;

CREATE VIEW customer_ranking AS
SELECT country, customer_id, name, orders, revenue, categories,
       rank() OVER (PARTITION BY country ORDER BY revenue DESC, customer_id) AS rank_in_country,
       round(100.0 * CAST(revenue AS DOUBLE) / sum(CAST(revenue AS DOUBLE)) OVER (PARTITION BY country), 1)
           AS pct_of_country
FROM customer_revenue;

COPY (SELECT * FROM customer_ranking ORDER BY country, rank_in_country)
TO '${OUT_DIR:-out}/report/customer_ranking.json';

COPY (
    SELECT c.country,
           date_trunc('month', CAST(o.order_date AS TIMESTAMP)) AS month,
           sum(o.quantity * o.unit_price) AS revenue,
           sum(sum(o.quantity * o.unit_price)) OVER (
               PARTITION BY c.country ORDER BY date_trunc('month', CAST(o.order_date AS TIMESTAMP))
               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running_revenue
    FROM orders o JOIN customers c ON c.customer_id = o.customer_id
    WHERE o.status IN ('paid', 'shipped')
    GROUP BY c.country, date_trunc('month', CAST(o.order_date AS TIMESTAMP))
    ORDER BY c.country, month
)
TO '${OUT_DIR:-out}/report/monthly_running_revenue.parquet';

SELECT country, name, revenue, rank_in_country, pct_of_country
FROM customer_ranking
WHERE rank_in_country = 1
ORDER BY revenue DESC;
