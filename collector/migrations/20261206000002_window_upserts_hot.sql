-- The window upserts (every batch adds its partial counts to the window rows it touches) were most
-- of what a batch costs PostgreSQL beyond its COPY: about 4.5 ms of backend CPU per batch whatever
-- its size, so at the 1,400-event batches group commit makes at 40,000 events/s, 3.1 µs per stored
-- event (`./storage-bench.sh --batch-rows 1400`, issue 32 item 3). Two causes, two fixes:
--
-- 1. No update was HOT. Rows are inserted into full pages, so each new version went to another
--    page with new entries in both indexes, and a row updated every batch for its window's life
--    (a 60 s window: about 1,700 times at 40,000 events/s) left that many dead versions for the
--    conflict check to step over until vacuum came. With room left in each page the update stays
--    in the page (none of the updated columns is indexed) and the page prunes its dead versions
--    itself. Measured in psql on 160 window rows updated 300 times (a batch each): 0 of 384,640
--    updates HOT and the partition at 301 MB with fillfactor 100; all HOT and 320 kB with 50.
--    failed_logins counts the same way (hits per subject and window) and gets the same room.
-- 2. hist_add, run once per window row updated, unnested both arrays and aggregated them back in
--    order through the SQL-function executor: about 30 µs a call on 81 buckets. It now adds
--    element by element: the same result (a missing or NULL element counts as 0, BIGINT overflow
--    still fails, no elements gives '{}', any lower bound), about half the cost.

CREATE OR REPLACE FUNCTION hist_add(a BIGINT[], b BIGINT[]) RETURNS BIGINT[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    n INT := GREATEST(COALESCE(cardinality(a), 0), COALESCE(cardinality(b), 0));
    la INT := COALESCE(array_lower(a, 1), 1) - 1;
    lb INT := COALESCE(array_lower(b, 1), 1) - 1;
    r BIGINT[] := '{}';
BEGIN
    FOR i IN 1..n LOOP
        r[i] := COALESCE(a[la + i], 0) + COALESCE(b[lb + i], 0);
    END LOOP;
    RETURN r;
END
$$;

-- The fill factor a partition of `parent` is made with: room for updated versions where rows are
-- counters updated in place, full pages where rows are only inserted.
CREATE OR REPLACE FUNCTION time_partition_fillfactor(parent TEXT) RETURNS INT
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN parent IN ('window_stats', 'failed_logins') THEN 50 ELSE 100 END
$$;

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
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
                    WITH (fillfactor = %s)',
                   name, parent, time_partition_fillfactor(parent));
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

-- The partitions made before: the new fill factor applies to the pages they fill from now on
-- (SET takes a lock that writers do not wait for).
DO $$
DECLARE
    t RECORD;
BEGIN
    FOR t IN SELECT partition, parent FROM time_partitions
             UNION ALL VALUES ('window_stats_default', 'window_stats'),
                              ('failed_logins_default', 'failed_logins') LOOP
        IF time_partition_fillfactor(t.parent) < 100 THEN
            EXECUTE format('ALTER TABLE %I SET (fillfactor = %s)',
                           t.partition, time_partition_fillfactor(t.parent));
        END IF;
    END LOOP;
END
$$;
