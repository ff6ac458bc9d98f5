-- Events out (SPEC 7): an outbox row may carry the event its write publishes after the
-- commit (`profile:updated`, `profile:deleted`), kept until it has been published.
-- Nullable columns without a default: a catalog change only (no table rewrite); the
-- ACCESS EXCLUSIVE lock it takes on this small, short-lived table is held for
-- milliseconds. Rows written before this migration carry no event.
ALTER TABLE cache_invalidations ADD COLUMN event text, ADD COLUMN payload text;

-- "Is an older event of this user still unpublished?" (asked in each write's transaction,
-- so a later event never overtakes an earlier one).
CREATE INDEX cache_invalidations_event_user_idx ON cache_invalidations (user_id, id)
    WHERE event IS NOT NULL;
