-- Run by: tests/rest.rs (it receives the webhook's POSTs on a free port).
-- A webhook as a sink: the order summary per status is POSTed as JSON to an HTTP endpoint
-- (a Slack/Teams-style incoming webhook, an alerting service, a partner API), with a bearer
-- token from a secret, in batches of up to 100 rows, each request with an Idempotency-Key.
-- Needs: --var HOOK_URL=https://hooks.example.com/... and FLOWENGINE_SECRET_API_TOKEN.
--
--   flowengine run sql-examples/webhook.sql --var HOOK_URL=https://hooks.example.com/orders

CREATE EXTERNAL TABLE orders
STORED AS CSV
LOCATION '${PIPELINE_DIR}/data/orders.csv'
OPTIONS ('format.has_header' 'true');

CREATE EXTERNAL TABLE order_summary_hook (region VARCHAR, orders BIGINT, revenue DOUBLE)
STORED AS WEBHOOK
LOCATION '${HOOK_URL}'
OPTIONS ('batch_size' '100', 'header.authorization' 'Bearer ${secret:API_TOKEN}');

-- One row per status (the receiver calls the field `region`: columns are matched by position).
INSERT INTO order_summary_hook
SELECT status, count(*), sum(quantity * unit_price)
FROM orders
GROUP BY status;
