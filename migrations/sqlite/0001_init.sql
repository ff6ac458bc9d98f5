-- Profiles, their two JSON documents, and the cache-invalidation outbox.
-- Ids are lowercase hyphenated UUID text, timestamps fixed-width RFC 3339 UTC text
-- (YYYY-MM-DDTHH:MM:SS.ffffffZ, so text order is time order), dates YYYY-MM-DD.

CREATE TABLE profiles (
    user_id       TEXT NOT NULL PRIMARY KEY,
    first_name    TEXT,
    last_name     TEXT,
    name          TEXT,
    email         TEXT,
    phone         TEXT,
    address       TEXT,
    date_of_birth TEXT,
    last_login    TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
) STRICT;

-- E-mail is unique ignoring (ASCII) case; NULLs never conflict. The repository
-- recognizes this index by name in SQLite's constraint message.
CREATE UNIQUE INDEX profiles_email_lower_key ON profiles (lower(email));

-- Prewarm: most recent logins first; most rows never logged in, so keep them out.
CREATE INDEX profiles_last_login_idx ON profiles (last_login) WHERE last_login IS NOT NULL;

CREATE TABLE settings (
    user_id    TEXT NOT NULL PRIMARY KEY REFERENCES profiles (user_id) ON DELETE CASCADE,
    data       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(data) AND json_type(data) = 'object'),
    updated_at TEXT NOT NULL
) STRICT;

CREATE TABLE preferences (
    user_id    TEXT NOT NULL PRIMARY KEY REFERENCES profiles (user_id) ON DELETE CASCADE,
    data       TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(data) AND json_type(data) = 'object'),
    updated_at TEXT NOT NULL
) STRICT;

-- AUTOINCREMENT: ids are never reused, so "oldest first" stays true after deletes.
-- No foreign key: the row recorded by a delete must outlive the profile.
CREATE TABLE cache_invalidations (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    TEXT NOT NULL,
    scope      TEXT NOT NULL,
    created_at TEXT NOT NULL
) STRICT;
