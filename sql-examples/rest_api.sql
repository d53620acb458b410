-- Run by: tests/rest.rs (it serves a paginated JSON API on a free port).
-- A REST API as a source: every page of a paginated JSON endpoint (next links in the body),
-- the records found at a JSON path, the bearer token from a secret; the result is written as
-- Parquet and summarised.
-- Needs: --var API_BASE=https://api.example.com and FLOWENGINE_SECRET_API_TOKEN.
--
--   flowengine run sql-examples/rest_api.sql --var API_BASE=https://api.example.com

CREATE EXTERNAL TABLE items STORED AS HTTP_JSON LOCATION '${API_BASE}/next'
OPTIONS ('records_path' 'data.items',
         'pagination' 'next_link', 'next_link_path' 'links.next',
         'header.authorization' 'Bearer ${secret:API_TOKEN}');

COPY (SELECT id, name, price FROM items ORDER BY id) TO '${OUT_DIR:-out}/rest_api/items.parquet';

SELECT count(*) AS items, sum(price) AS total_price FROM items;
