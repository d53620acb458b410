-- Run by: tests/object_stores.rs (it starts Azurite and passes its endpoint and key).
-- Azure Blob Storage as a sink and a source: write the customers as Parquet into a container
-- and read them back. The account key comes from a secret reference, never the statement text.
-- Needs: a container ${CONTAINER}, FLOWENGINE_SECRET_AZURE_KEY, --var ACCOUNT=... and
-- --var AZURE_ENDPOINT=https://ACCOUNT.blob.core.windows.net (or Azurite's http://127.0.0.1:10000/devstoreaccount1).

CREATE EXTERNAL TABLE customers_csv STORED AS CSV LOCATION '${PIPELINE_DIR}/data/customers.csv';

COPY customers_csv TO 'az://${CONTAINER}/shop/customers.parquet';

CREATE EXTERNAL TABLE blob_customers STORED AS PARQUET LOCATION 'az://${CONTAINER}/shop/'
OPTIONS ('azure.account_name' '${ACCOUNT}', 'azure.access_key' '${secret:AZURE_KEY}',
         'azure.endpoint' '${AZURE_ENDPOINT}', 'azure.allow_http' '${ALLOW_HTTP:-false}');

SELECT country, count(*) AS customers FROM blob_customers GROUP BY country ORDER BY customers DESC, country LIMIT 3;
