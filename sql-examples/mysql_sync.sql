-- MySQL / MariaDB as a sink and a source: load the shop's products into a MariaDB table
-- (created from the declared columns if missing, upserted on the key), then read it back and
-- join it with the orders CSV.
-- Needs: MySQL or MariaDB (default mysql://root@127.0.0.1:3306/test; --var MYSQL_URL=...).
--
--   flowengine run sql-examples/mysql_sync.sql [--var OUT_DIR=/tmp/fe]

CREATE EXTERNAL TABLE products_csv STORED AS CSV LOCATION '${PIPELINE_DIR}/data/products.csv';
CREATE EXTERNAL TABLE orders STORED AS CSV LOCATION '${PIPELINE_DIR}/data/orders.csv';

CREATE EXTERNAL TABLE my_products (
    product_id BIGINT NOT NULL,
    name VARCHAR,
    category VARCHAR,
    list_price DECIMAL(10, 2),
    PRIMARY KEY (product_id)
)
STORED AS MYSQL
LOCATION 'flowengine_example_products'
OPTIONS ('connection' '${MYSQL_URL:-mysql://root@127.0.0.1:3306/test}',
         'on_conflict' 'upsert:product_id');

INSERT INTO my_products
SELECT product_id, name, category, CAST(list_price AS DECIMAL(10, 2)) FROM products_csv;

COPY (
    SELECT p.category, sum(o.quantity) AS items
    FROM orders o JOIN my_products p ON p.product_id = o.product_id
    GROUP BY p.category ORDER BY p.category
) TO '${OUT_DIR:-out}/mysql_sync/items_by_category.csv';

SELECT category, count(*) AS products FROM my_products GROUP BY category ORDER BY category;
