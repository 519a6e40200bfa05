-- Window rows written before latencies were bounded (windows::MAX_LATENCY_MS, one day) may hold a
-- sum or maximum no later upsert can add to ("value out of range: overflow"): such a row refused
-- every batch that touched it, and a restart did not heal it. Cut them to what the bound allows:
-- the maximum to one day, the sum to one day per latency counted. NaN and infinities compare
-- greater than every number in PostgreSQL, so they are cut too.
UPDATE window_stats
   SET latency_max_ms = LEAST(latency_max_ms, 86400000),
       latency_sum_ms = LEAST(latency_sum_ms, latency_count * 86400000.0)
 WHERE latency_max_ms > 86400000
    OR latency_sum_ms > latency_count * 86400000.0;
