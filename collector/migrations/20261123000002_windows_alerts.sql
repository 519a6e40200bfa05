-- Byte-order comparison of event ids: cheaper than a locale collation on the hottest index, and ULIDs
-- sort the same either way.
ALTER TABLE log_events ALTER COLUMN event_id TYPE TEXT COLLATE "C";

-- Event-time progress of each partition (its newest event time). It commits with the offset, so a
-- restarted or new owner judges lateness exactly as the old one would have.
ALTER TABLE consumer_offsets ADD COLUMN IF NOT EXISTS max_event_ts TIMESTAMPTZ;

-- Window results. Every batch adds its partial counts to the rows it touches (additive upserts in
-- the batch's transaction), so a row is exact however batches and restarts cut the stream.
-- Tumbling windows have slide_secs = width_secs. latency_hist[i] counts latencies up to 2^((i-1)/4)
-- ms (1-based arrays); p50/p95 are read from it.
CREATE TABLE IF NOT EXISTS window_stats (
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
);
CREATE INDEX IF NOT EXISTS window_stats_service_idx
    ON window_stats (service, width_secs, slide_secs, window_start);

-- Element-wise sum of two histograms of possibly different lengths.
CREATE OR REPLACE FUNCTION hist_add(a BIGINT[], b BIGINT[]) RETURNS BIGINT[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT COALESCE(array_agg(COALESCE(x, 0) + COALESCE(y, 0) ORDER BY i), '{}')
    FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i)
$$;

-- Alerts, one row per episode. Per-event alerts (fatal_event, sql_injection, brute_force) extend the
-- open episode of their (kind, subject) while detections keep coming within the quiet gap;
-- error_rate_spike episodes last while consecutive windows stay above the baseline.
-- published_at is the outbox mark: rows are published to the alerts topic after they commit.
CREATE TABLE IF NOT EXISTS alerts (
    alert_id     TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    kind         TEXT             NOT NULL,
    subject      TEXT             NOT NULL,
    service      TEXT             NOT NULL,
    severity     TEXT             NOT NULL,
    summary      TEXT             NOT NULL,
    first_seen   TIMESTAMPTZ      NOT NULL,
    last_seen    TIMESTAMPTZ      NOT NULL,
    occurrences  BIGINT           NOT NULL,
    details      JSONB            NOT NULL DEFAULT '{}'::jsonb,
    raised_at    TIMESTAMPTZ      NOT NULL DEFAULT now(),
    ended_at     TIMESTAMPTZ,
    published_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS alerts_episode_idx ON alerts (kind, subject, last_seen DESC);
CREATE INDEX IF NOT EXISTS alerts_first_seen_idx ON alerts (first_seen DESC, alert_id DESC);
CREATE INDEX IF NOT EXISTS alerts_unpublished_idx ON alerts (raised_at) WHERE published_at IS NULL;

-- Error-rate state per service: the moving baseline (learned from normal windows only), the last
-- window judged (NULL before the first), and whether an episode is open.
CREATE TABLE IF NOT EXISTS error_rate_state (
    service            TEXT             NOT NULL PRIMARY KEY,
    last_window_start  TIMESTAMPTZ,
    baseline           DOUBLE PRECISION NOT NULL,
    baseline_windows   BIGINT           NOT NULL,
    open_alert_id      TEXT
);

-- Failed logins per subject (ip:… or user:…) and brute-force window.
CREATE TABLE IF NOT EXISTS failed_logins (
    subject      TEXT        NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    hits         BIGINT      NOT NULL,
    PRIMARY KEY (subject, window_start)
);
