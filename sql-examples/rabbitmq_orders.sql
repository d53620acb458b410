-- Run by: tests/queues.rs (its own queue, so no other test consumes from it).
-- RabbitMQ as a sink and a source: publish the shop's paid orders to a queue (each row one
-- JSON message, the statement done once the broker confirmed all), then consume them into
-- Parquet. The messages are acknowledged only after the run committed, so a failed run leaves
-- them in the queue for the next one.
-- Needs: RabbitMQ (default 127.0.0.1:5672, guest/guest; --var AMQP=host:port).
--
--   flowengine run sql-examples/rabbitmq_orders.sql [--var OUT_DIR=/tmp/fe]
--   flowengine run --follow sql-examples/rabbitmq_orders.sql   (keeps consuming)

CREATE EXTERNAL TABLE orders_csv STORED AS CSV LOCATION '${PIPELINE_DIR}/data/orders.csv';

CREATE EXTERNAL TABLE paid_orders (
    order_id BIGINT NOT NULL,
    customer_id BIGINT,
    amount DOUBLE,
    order_date DATE
)
STORED AS RABBITMQ
LOCATION 'amqp://${AMQP:-127.0.0.1:5672}/${QUEUE:-flowengine_example_orders}'
OPTIONS ('message_id' 'order_id', 'on_error' 'dead_letter',
         'dead_letter_path' '${OUT_DIR:-out}/rabbitmq_orders/bad_messages.jsonl');

INSERT INTO paid_orders (order_id, customer_id, amount, order_date)
SELECT order_id, customer_id, quantity * unit_price, CAST(order_date AS DATE)
FROM orders_csv WHERE status = 'paid';

-- Consumes the queue: acknowledged after this file is committed.
COPY (SELECT order_id, customer_id, amount, order_date, _redelivered FROM paid_orders)
TO '${OUT_DIR:-out}/rabbitmq_orders/paid_orders.parquet';

SELECT count(*) AS paid_orders FROM orders_csv WHERE status = 'paid';
