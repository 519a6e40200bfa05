-- hist_add, the window upsert's histogram sum, adds element by element instead of unnesting both
-- arrays and aggregating them back in order: the same result (a missing or NULL element counts as
-- 0, BIGINT overflow still fails, no elements gives '{}', any lower bound), at about half the cost
-- per call on 81-bucket histograms. It runs once per window row a batch updates, and was most of
-- what the window upserts cost PostgreSQL per stored event (`./storage-bench.sh`, "What the
-- collector's batch adds to its COPY"; issue 32 item 3).
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
