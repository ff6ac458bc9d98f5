-- A profile's own id ("id" in the profile JSON): the Python service's table keys its rows
-- by it, and a database taken over from it keeps each row's id (src/db/takeover.rs records
-- this migration as applied there). The service generates it on create; the default
-- serves any other writer.
--
-- The volatile default fills every existing row, which rewrites the table under an ACCESS
-- EXCLUSIVE lock held until this migration commits (docs/database.md: about 8 s per
-- million rows on a small machine). IF NOT EXISTS: a large deployment can add the column
-- and index online by hand first (docs/database.md gives the steps); this then only
-- records itself.

ALTER TABLE profiles ADD COLUMN IF NOT EXISTS id uuid NOT NULL DEFAULT gen_random_uuid();

CREATE UNIQUE INDEX IF NOT EXISTS profiles_id_key ON profiles (id);
