-- Every time a partition's stored offset did not fit the broker's log and was moved (see
-- consumer.offset_out_of_range): what was stored, where it went, the log's bounds when it was
-- seen, and why. Kept so a reset is never silent, even after the logs are gone.
CREATE TABLE IF NOT EXISTS offset_resets (
    reset_id        BIGSERIAL   PRIMARY KEY,
    consumer_group  TEXT        NOT NULL,
    topic           TEXT        NOT NULL,
    kafka_partition INTEGER     NOT NULL,
    old_offset      BIGINT      NOT NULL,
    new_offset      BIGINT      NOT NULL,
    log_start       BIGINT      NOT NULL,
    log_end         BIGINT      NOT NULL,
    reason          TEXT        NOT NULL,
    reset_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
