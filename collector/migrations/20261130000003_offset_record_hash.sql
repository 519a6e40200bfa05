-- A fingerprint of the record just before each stored offset (key, payload and timestamp hashed,
-- see `consumer::decide::fingerprint`). A resumed partition re-reads that record and compares:
-- a different record means the broker's log was replaced (an in-memory broker restarted, the
-- topic recreated) even when the new log already reaches past the stored offset, which the
-- log's bounds alone cannot tell. NULL: no record stored yet, or the offset was just reset.
ALTER TABLE consumer_offsets ADD COLUMN IF NOT EXISTS last_record_hash BIGINT;
