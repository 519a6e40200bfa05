-- Time partitions (ARCHITECTURE.md, "Storage"). log_events, window_stats and failed_logins become
-- tables partitioned by range on their time column, so retention drops whole partitions instead of
-- deleting rows. An install that holds data is upgraded in place: its rows are copied into the new
-- layout, then the old tables are dropped; everything happens in this migration's transaction, so
-- an interrupted upgrade leaves the old layout as it was.

-- Every partition the collector made: its parent, its range and whether its text index is built.
-- The maintenance task reads it instead of parsing pg_class.relpartbound.
CREATE TABLE IF NOT EXISTS time_partitions (
    partition    TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    parent       TEXT COLLATE "C" NOT NULL,
    lower_bound  TIMESTAMPTZ      NOT NULL,
    upper_bound  TIMESTAMPTZ      NOT NULL,
    text_indexed BOOLEAN          NOT NULL DEFAULT false,
    created_at   TIMESTAMPTZ      NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS time_partitions_parent_idx ON time_partitions (parent, lower_bound);

-- Make the partition of `parent` for [lower_bound, upper_bound) on column `key`, unless it exists.
-- Rows that already landed in the default partition for that range (an event dated ahead of the
-- partitions made so far) move into it, in the same transaction. The advisory lock serialises
-- collectors of the same schema that run maintenance at the same time. Returns the partition's
-- name: `<parent>_pYYYYMMDD` for a range starting at midnight UTC, `<parent>_pYYYYMMDD_HH24MI`
-- otherwise.
CREATE OR REPLACE FUNCTION ensure_time_partition(parent TEXT, key TEXT, lower_bound TIMESTAMPTZ,
                                                 upper_bound TIMESTAMPTZ)
RETURNS TEXT LANGUAGE plpgsql AS $$
DECLARE
    day_aligned BOOLEAN := (lower_bound AT TIME ZONE 'UTC')::time = '00:00'
                           AND (upper_bound AT TIME ZONE 'UTC')::time = '00:00';
    name TEXT := parent || '_p' || to_char(lower_bound AT TIME ZONE 'UTC',
                                           CASE WHEN day_aligned THEN 'YYYYMMDD'
                                                ELSE 'YYYYMMDD_HH24MI' END);
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(current_schema() || '.time_partitions'));
    IF EXISTS (SELECT 1 FROM time_partitions t WHERE t.partition = name) THEN
        RETURN name;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                   name, parent);
    EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= $1 AND %I < $2 RETURNING *)
                    INSERT INTO %I SELECT * FROM moved',
                   parent || '_default', key, key, name)
        USING lower_bound, upper_bound;
    -- ATTACH, not CREATE … PARTITION OF: it takes a weaker lock on the parent, so writers and
    -- readers of other partitions are not blocked meanwhile.
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   parent, name, lower_bound, upper_bound);
    INSERT INTO time_partitions (partition, parent, lower_bound, upper_bound)
    VALUES (name, parent, lower_bound, upper_bound);
    RETURN name;
END
$$;

-- The old tables step aside under another name (their indexes too, whose names the new tables
-- take). A fresh install has them as well, made empty by the first migrations.
ALTER TABLE log_events RENAME TO log_events_unpartitioned;
ALTER INDEX log_events_pkey RENAME TO log_events_unpartitioned_pkey;
ALTER INDEX log_events_ts_idx RENAME TO log_events_unpartitioned_ts_idx;
ALTER INDEX log_events_service_ts_idx RENAME TO log_events_unpartitioned_service_ts_idx;
ALTER TABLE window_stats RENAME TO window_stats_unpartitioned;
ALTER INDEX window_stats_pkey RENAME TO window_stats_unpartitioned_pkey;
ALTER INDEX window_stats_service_idx RENAME TO window_stats_unpartitioned_service_idx;
ALTER TABLE failed_logins RENAME TO failed_logins_unpartitioned;
ALTER INDEX failed_logins_pkey RENAME TO failed_logins_unpartitioned_pkey;

-- The primary key is (ts, event_id): a unique key of a partitioned table must hold the partition
-- key, and in this order one index serves both the duplicate guard and the events page (newest
-- first, cursor on (ts, event_id)). An event's id and time are both part of its identity: a
-- client's retry carries the same id and the same timestamp.
CREATE TABLE log_events (
    event_id        TEXT COLLATE "C" NOT NULL,
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
    stored_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (ts, event_id)
) PARTITION BY RANGE (ts);
-- The per-service page: newest first within one service.
CREATE INDEX log_events_service_ts_idx ON log_events (service, ts DESC);
-- Rows outside every partition (older than retention, or dated past the partitions made ahead)
-- land here instead of failing their batch; the maintenance task reports how many.
CREATE TABLE log_events_default PARTITION OF log_events DEFAULT;

CREATE TABLE window_stats (
    width_secs     INTEGER          NOT NULL,
    slide_secs     INTEGER          NOT NULL,
    window_start   TIMESTAMPTZ      NOT NULL,
    service        TEXT             NOT NULL,
    level          TEXT             NOT NULL,
    event_count    BIGINT           NOT NULL,
    latency_count  BIGINT           NOT NULL DEFAULT 0,
    latency_sum_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
    latency_max_ms DOUBLE PRECISION,
    latency_hist   BIGINT[]         NOT NULL DEFAULT '{}',
    updated_at     TIMESTAMPTZ      NOT NULL DEFAULT now(),
    PRIMARY KEY (width_secs, slide_secs, window_start, service, level)
) PARTITION BY RANGE (window_start);
CREATE INDEX window_stats_service_idx ON window_stats (service, width_secs, slide_secs, window_start);
CREATE TABLE window_stats_default PARTITION OF window_stats DEFAULT;

CREATE TABLE failed_logins (
    subject      TEXT        NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    hits         BIGINT      NOT NULL,
    PRIMARY KEY (subject, window_start)
) PARTITION BY RANGE (window_start);
CREATE TABLE failed_logins_default PARTITION OF failed_logins DEFAULT;

-- The old rows: a daily partition for every day they cover (the default width; the collector
-- makes later ones at its configured width), then one INSERT … SELECT per table.
DO $$
DECLARE
    t RECORD;
    d TIMESTAMPTZ;
BEGIN
    FOR t IN SELECT * FROM (VALUES ('log_events', 'ts'), ('window_stats', 'window_start'),
                                   ('failed_logins', 'window_start')) AS v(parent, key) LOOP
        FOR d IN EXECUTE format('SELECT DISTINCT date_trunc(''day'', %I, ''UTC'') FROM %I',
                                t.key, t.parent || '_unpartitioned') LOOP
            PERFORM ensure_time_partition(t.parent, t.key, d, d + interval '1 day');
        END LOOP;
        EXECUTE format('INSERT INTO %I SELECT * FROM %I', t.parent, t.parent || '_unpartitioned');
        EXECUTE format('DROP TABLE %I', t.parent || '_unpartitioned');
    END LOOP;
END
$$;
