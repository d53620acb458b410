-- Reliable load: a landing file with bad records is read with a dead-letter policy (bad rows
-- go to a JSON-lines file and a table, with file, line and reason), checked for quality before
-- anything is written, and loaded incrementally by paid_at, so a rerun only loads new payments.
-- Needs: nothing. Output goes to ${OUT_DIR}, default ./out.

CREATE EXTERNAL TABLE payments (
    payment_id BIGINT NOT NULL,
    order_id   BIGINT,
    amount     DECIMAL(10, 2),
    paid_at    TIMESTAMP,
    method     VARCHAR
)
STORED AS CSV
LOCATION '${PIPELINE_DIR}/data/payments_dirty.csv'
OPTIONS ('on_error' 'dead_letter',
         'dead_letter_path' '${OUT_DIR:-out}/dead_letters/payments.jsonl',
         'dead_letter_table' 'bad_payments',
         'max_bad_records' '100');

-- Quality gates: an ERROR check stops the run here, before the load below commits.
CREATE CHECK payment_ids_unique ON payments UNIQUE (payment_id);
CREATE CHECK amounts_positive   ON payments EXPECT amount > 0;
CREATE CHECK known_methods      ON payments EXPECT method IN ('card', 'transfer', 'paypal') WARN;

-- Only payments newer than the last successful run's watermark.
CREATE INCREMENTAL VIEW new_payments ON payments BY paid_at;

CREATE EXTERNAL TABLE payments_loaded (
    payment_id BIGINT, order_id BIGINT, amount DECIMAL(10, 2), paid_at TIMESTAMP, method VARCHAR
)
STORED AS PARQUET
LOCATION '${OUT_DIR:-out}/payments/';

INSERT INTO payments_loaded SELECT * FROM new_payments;

-- What was rejected, and why.
SELECT line, reason, raw FROM bad_payments ORDER BY line;
