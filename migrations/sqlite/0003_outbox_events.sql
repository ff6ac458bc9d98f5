-- Events out (SPEC 7): an outbox row may carry the event its write publishes after the
-- commit (`profile:updated`, `profile:deleted`), kept until it has been published.
-- Rows written before this migration carry no event.
ALTER TABLE cache_invalidations ADD COLUMN event TEXT;
ALTER TABLE cache_invalidations ADD COLUMN payload TEXT;

-- "Is an older event of this user still unpublished?" (asked in each write's transaction).
CREATE INDEX cache_invalidations_event_user_idx ON cache_invalidations (user_id, id)
    WHERE event IS NOT NULL;
