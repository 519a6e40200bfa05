-- The live tail (`GET /api/v1/events/stream`) reads the rows committed since its last poll: per
-- Kafka partition, an offset range. Offsets and `stored_at` (the writer's transaction time) both
-- grow with the order rows are written in, so a BRIN index summarises them in a few pages per
-- partition and costs the writer next to nothing, where a B-tree on (partition, offset) would be
-- a third B-tree on every insert. `stored_at` keeps a poll from touching old blocks whose offsets
-- overlap new ones (after a broker restart with an in-memory log, offsets start again at 0).
CREATE INDEX IF NOT EXISTS log_events_tail_brin ON log_events USING brin (kafka_offset, stored_at);
