-- The notifier's storm guard: past JOBLOG_NOTIFY_STORM_THRESHOLD deliveries to one receiver within
-- JOBLOG_NOTIFY_STORM_WINDOW seconds, further alerts to it are held and sent as one summary.
ALTER TABLE alert_deliveries
    ADD COLUMN grouped     boolean NOT NULL DEFAULT false,  -- held for the receiver's next summary
    ADD COLUMN summary_id  uuid;                            -- the summary it was delivered in
-- How many deliveries a receiver got lately (the storm test), without reading its whole history.
CREATE INDEX alert_deliveries_recent ON alert_deliveries (channel, target, delivered_at) WHERE delivered_at IS NOT NULL;
