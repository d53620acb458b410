-- CSV cleanup: raw, messy events (stray spaces, mixed case, 'n/a' and decimal-comma amounts,
-- unparsable timestamps) are normalised with casts and filters. Rows that cannot be repaired
-- are kept apart in a rejects file instead of being dropped silently. Writes TSV and CSV.
-- Needs: nothing. Output goes to ${OUT_DIR}, default ./out.

CREATE EXTERNAL TABLE raw_events (
    event_id   BIGINT,
    user_email VARCHAR,
    event_type VARCHAR,
    amount     VARCHAR,
    event_time VARCHAR,
    country    VARCHAR
)
STORED AS CSV
LOCATION '${PIPELINE_DIR}/data/raw_events.csv'
OPTIONS ('format.has_header' 'true');

CREATE VIEW events_normalised AS
SELECT event_id,
       lower(trim(user_email))                                   AS user_email,
       lower(trim(event_type))                                   AS event_type,
       try_cast(replace(trim(amount), ',', '.') AS DECIMAL(10, 2)) AS amount,
       try_cast(event_time AS TIMESTAMP)                         AS event_time,
       nullif(upper(trim(country)), '')                          AS country,
       amount     AS raw_amount,
       event_time AS raw_event_time
FROM raw_events;

-- Clean rows: a valid timestamp, and an amount exactly when the event is a purchase.
CREATE VIEW events_clean AS
SELECT event_id, user_email, event_type, amount, event_time, country
FROM events_normalised
WHERE event_time IS NOT NULL
  AND ((event_type = 'purchase' AND amount IS NOT NULL)
       OR (event_type <> 'purchase' AND raw_amount IS NULL));

COPY (SELECT * FROM events_clean ORDER BY event_id)
TO '${OUT_DIR:-out}/cleanup/events_clean.tsv';

COPY (
    SELECT event_id, raw_amount, raw_event_time,
           CASE WHEN event_time IS NULL THEN 'bad timestamp' ELSE 'bad amount' END AS reason
    FROM events_normalised
    WHERE event_id NOT IN (SELECT event_id FROM events_clean)
    ORDER BY event_id
)
TO '${OUT_DIR:-out}/cleanup/events_rejected.csv';

-- Every input row is either clean or rejected.
SELECT (SELECT count(*) FROM raw_events)   AS input_rows,
       (SELECT count(*) FROM events_clean) AS clean_rows,
       (SELECT count(*) FROM raw_events) - (SELECT count(*) FROM events_clean) AS rejected_rows,
       (SELECT sum(amount) FROM events_clean WHERE event_type = 'purchase') AS purchase_total;
