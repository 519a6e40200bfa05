-- The window upsert alone, in psql: 160 window rows (8 services x 5 levels x 4 windows) updated by
-- the collector's statement 300 times, a transaction each, with the histogram sum as it was (1), as
-- it is (4: PL/pgSQL in place), inline (3), or left out (2, the floor). Prints wall µs per batch,
-- then how many updates were HOT and the partition's size. BENCHMARKS.md has its figures.
--
--   psql -h 127.0.0.1 -U postgres -d logpipe_bench -v ff=50 -f storage-bench/window_upserts.sql
--
-- ff is the partition's fillfactor (100 was the default). It works in the schema wsexp, made
-- afresh and dropped at the end.
\set ON_ERROR_STOP on
DROP SCHEMA IF EXISTS wsexp CASCADE;
CREATE SCHEMA wsexp;
SET search_path = wsexp;
CREATE OR REPLACE FUNCTION hist_add(a BIGINT[], b BIGINT[]) RETURNS BIGINT[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT COALESCE(array_agg(COALESCE(x, 0) + COALESCE(y, 0) ORDER BY i), '{}')
    FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i)
$$;
CREATE OR REPLACE FUNCTION hist_add_pl(a BIGINT[], b BIGINT[]) RETURNS BIGINT[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE r BIGINT[] := a; i int;
BEGIN
  IF cardinality(b) = 0 THEN RETURN a; END IF;
  IF cardinality(a) = 0 THEN RETURN b; END IF;
  FOR i IN 1..cardinality(b) LOOP
    r[i] := COALESCE(r[i], 0) + b[i];
  END LOOP;
  RETURN r;
END $$;
CREATE TABLE window_stats (
    width_secs INTEGER NOT NULL, slide_secs INTEGER NOT NULL, window_start TIMESTAMPTZ NOT NULL,
    service TEXT NOT NULL, level TEXT NOT NULL, event_count BIGINT NOT NULL,
    latency_count BIGINT NOT NULL DEFAULT 0, latency_sum_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
    latency_max_ms DOUBLE PRECISION, latency_hist BIGINT[] NOT NULL DEFAULT '{}',
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (width_secs, slide_secs, window_start, service, level)
) PARTITION BY RANGE (window_start);
CREATE INDEX ON window_stats (service, width_secs, slide_secs, window_start);
CREATE TABLE window_stats_default PARTITION OF window_stats DEFAULT WITH (fillfactor = :ff);
-- 160 keys: 8 services x 5 levels x 4 windows; the hist as the collector sends it (81 buckets as text)
CREATE TABLE k AS
SELECT w.wi, w.sl, '2026-12-06 20:00:00+00'::timestamptz - make_interval(secs => w.back) AS st, 'svc-' || s AS sv, l AS lv,
       10::int8 AS c, 8::int8 AS lc, 123.0::float8 AS ls, 99.0::float8 AS lm,
       (SELECT '{' || string_agg(CASE WHEN i BETWEEN 20 AND 40 THEN '1' ELSE '0' END, ',') || '}' FROM generate_series(1,81) i) AS h
FROM (VALUES (10,10,0),(60,60,0),(60,30,0),(60,30,30)) w(wi,sl,back), generate_series(1,8) s, unnest(array['DEBUG','INFO','WARN','ERROR','FATAL']) l;
SELECT count(*), count(DISTINCT (wi,sl,st,sv,lv)) FROM k;
CREATE TABLE arr AS SELECT array_agg(wi) wi, array_agg(sl) sl, array_agg(st) st, array_agg(sv) sv, array_agg(lv) lv,
  array_agg(c) c, array_agg(lc) lc, array_agg(ls) ls, array_agg(lm) lm, array_agg(h) h FROM k;
-- A copy of the collector's upsert (collector/src/db.rs, upsert_windows; keep them in step) with
-- the histogram sum of `variant`:
-- 1 hist_add as it was (SQL), 2 none (the floor), 3 inline, 4 hist_add in PL/pgSQL (as it is now).
CREATE OR REPLACE FUNCTION hist_expr(variant int) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT (ARRAY[
        'hist_add(w.latency_hist, EXCLUDED.latency_hist)',
        'w.latency_hist',
        'ARRAY(SELECT COALESCE(w.latency_hist[gx], 0) + COALESCE(EXCLUDED.latency_hist[gx], 0)
                 FROM generate_series(1, greatest(cardinality(w.latency_hist),
                                                  cardinality(EXCLUDED.latency_hist))) gs(gx))',
        'hist_add_pl(w.latency_hist, EXCLUDED.latency_hist)'])[variant]
$$;
-- n batches, a transaction each (a procedure may commit). The statement is made a function of its
-- own per variant, so its plan is cached, as sqlx prepares the collector's.
CREATE OR REPLACE PROCEDURE run(variant int, n int) LANGUAGE plpgsql AS $f$
DECLARE t0 timestamptz;
BEGIN
  EXECUTE format($s$CREATE OR REPLACE FUNCTION upsert(a arr) RETURNS void LANGUAGE plpgsql AS $u$
    BEGIN
      INSERT INTO window_stats AS w (width_secs, slide_secs, window_start, service, level,
                                     event_count, latency_count, latency_sum_ms, latency_max_ms,
                                     latency_hist)
      SELECT wi, sl, st, sv, lv, c, lc, ls, lm, h::int8[]
        FROM UNNEST(a.wi, a.sl, a.st, a.sv, a.lv, a.c, a.lc, a.ls, a.lm, a.h)
             AS u(wi, sl, st, sv, lv, c, lc, ls, lm, h)
      ON CONFLICT (width_secs, slide_secs, window_start, service, level) DO UPDATE SET
        event_count = w.event_count + EXCLUDED.event_count,
        latency_count = w.latency_count + EXCLUDED.latency_count,
        latency_sum_ms = w.latency_sum_ms + EXCLUDED.latency_sum_ms,
        latency_max_ms = GREATEST(w.latency_max_ms, EXCLUDED.latency_max_ms),
        latency_hist = %s, updated_at = now();
    END $u$$s$, hist_expr(variant));
  COMMIT;
  t0 := clock_timestamp();
  FOR i IN 1..n LOOP
    PERFORM upsert(arr) FROM arr;
    COMMIT;
  END LOOP;
  RAISE NOTICE 'variant % : % us per batch', variant,
    round((extract(epoch FROM clock_timestamp() - t0) * 1e6 / n)::numeric, 1);
END $f$;
CALL run(1, 5);
CALL run(1, 300);
CALL run(2, 300);
CALL run(3, 300);
CALL run(4, 300);
CALL run(1, 300);
CALL run(2, 300);
CALL run(3, 300);
CALL run(4, 300);
SELECT pg_size_pretty(pg_total_relation_size('window_stats_default')), n_tup_hot_upd, n_tup_upd FROM pg_stat_user_tables WHERE relname='window_stats_default';
DROP SCHEMA wsexp CASCADE;
