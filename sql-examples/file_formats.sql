-- File formats tour: reads Avro, then writes and re-reads every other format DataFusion and
-- FlowEngine handle: gzip-compressed CSV, TSV, newline-delimited JSON (zstd), Arrow IPC and
-- Parquet, and checks that every copy holds the same rows.
-- Needs: nothing. Output goes to ${OUT_DIR}, default ./out.

CREATE EXTERNAL TABLE products_avro
STORED AS AVRO
LOCATION '${PIPELINE_DIR}/data/products.avro';

COPY products_avro TO '${OUT_DIR:-out}/formats/products.csv.gz'
STORED AS CSV OPTIONS ('format.compression' 'gzip');
COPY products_avro TO '${OUT_DIR:-out}/formats/products.tsv';
COPY products_avro TO '${OUT_DIR:-out}/formats/products.json.zst'
STORED AS JSON OPTIONS ('format.compression' 'zstd');
COPY products_avro TO '${OUT_DIR:-out}/formats/products.arrow';
COPY products_avro TO '${OUT_DIR:-out}/formats/products.parquet';

CREATE EXTERNAL TABLE p_csv STORED AS CSV LOCATION '${OUT_DIR:-out}/formats/products.csv.gz'
OPTIONS ('format.compression' 'gzip');
CREATE EXTERNAL TABLE p_tsv STORED AS TSV LOCATION '${OUT_DIR:-out}/formats/products.tsv';
CREATE EXTERNAL TABLE p_json STORED AS JSON LOCATION '${OUT_DIR:-out}/formats/products.json.zst'
OPTIONS ('format.compression' 'zstd');
CREATE EXTERNAL TABLE p_arrow STORED AS ARROW LOCATION '${OUT_DIR:-out}/formats/products.arrow';
CREATE EXTERNAL TABLE p_parquet STORED AS PARQUET LOCATION '${OUT_DIR:-out}/formats/products.parquet';

SELECT 'avro' AS format, count(*) AS rows, sum(list_price) AS total_price FROM products_avro
UNION ALL SELECT 'csv.gz',   count(*), sum(list_price) FROM p_csv
UNION ALL SELECT 'tsv',      count(*), sum(list_price) FROM p_tsv
UNION ALL SELECT 'json.zst', count(*), sum(list_price) FROM p_json
UNION ALL SELECT 'arrow',    count(*), sum(list_price) FROM p_arrow
UNION ALL SELECT 'parquet',  count(*), sum(list_price) FROM p_parquet
ORDER BY format;
