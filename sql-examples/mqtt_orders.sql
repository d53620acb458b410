-- Run by: tests/mqtt.rs (its own topic and client id, so nothing else reads them).
-- MQTT as a sink and a source: publish the shop's paid orders, each one JSON message (the
-- statement done once the broker acknowledged each at QoS 1), then consume them into Parquet
-- through the table's local spool. The spool forgets the messages only after this run
-- committed, so a failed run leaves them for the next one.
-- Needs: an MQTT broker (default 127.0.0.1:1883; --var MQTT=host:port). While no pipeline
-- runs, the broker keeps what is published for the session up to its queue limit (Mosquitto's
-- max_queued_messages, 1000 by default).
--
--   flowengine run sql-examples/mqtt_orders.sql [--var OUT_DIR=/tmp/fe]
--   flowengine run --follow sql-examples/mqtt_orders.sql   (keeps consuming)

CREATE EXTERNAL TABLE orders_csv STORED AS CSV LOCATION '${PIPELINE_DIR}/data/orders.csv';

CREATE EXTERNAL TABLE order_events (
    order_id BIGINT NOT NULL,
    status VARCHAR,
    amount DOUBLE
)
STORED AS MQTT
LOCATION 'mqtt://${MQTT:-127.0.0.1:1883}/${TOPIC:-flowengine/example/orders}'
OPTIONS ('client_id' '${CLIENT_ID:-flowengine-example}', 'idle_timeout_ms' '1000',
         'spool_dir' '${OUT_DIR:-out}/mqtt_orders/spool',
         'on_error' 'dead_letter',
         'dead_letter_path' '${OUT_DIR:-out}/mqtt_orders/bad_messages.jsonl');

-- A session receives only what is published after it subscribed: a first look opens it.
SELECT count(*) AS already_waiting FROM order_events;

INSERT INTO order_events (order_id, status, amount)
SELECT order_id, status, quantity * unit_price FROM orders_csv WHERE status = 'paid';

-- Consumes the messages: the spool forgets them after this file is committed.
COPY (SELECT order_id, status, amount, _topic, _spool_seq FROM order_events)
TO '${OUT_DIR:-out}/mqtt_orders/order_events.parquet';

SELECT count(*) AS paid_orders FROM orders_csv WHERE status = 'paid';
