-- A profile's own id ("id" in the profile JSON), lowercase hyphenated UUID text like
-- user_id. The service generates it in Rust on every insert (SQLite has no UUID
-- function); existing rows get a random version-4 UUID here, and the trigger below gives
-- one to a row inserted without it by any other writer (an operator's sqlite3).
--
-- SQLite cannot add a NOT NULL column without a constant default, nor alter one later
-- short of rebuilding the table (whose DROP would cascade into settings and preferences),
-- so NOT NULL is kept by the triggers instead.

ALTER TABLE profiles ADD COLUMN id TEXT;

UPDATE profiles SET id =
    lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
    substr(lower(hex(randomblob(2))), 2) || '-' ||
    substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2) || '-' ||
    lower(hex(randomblob(6)));

CREATE UNIQUE INDEX profiles_id_key ON profiles (id);

CREATE TRIGGER profiles_id_on_insert AFTER INSERT ON profiles WHEN NEW.id IS NULL
BEGIN
    UPDATE profiles SET id =
        lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
        substr(lower(hex(randomblob(2))), 2) || '-' ||
        substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2) ||
        '-' || lower(hex(randomblob(6)))
    WHERE rowid = NEW.rowid;
END;

CREATE TRIGGER profiles_id_not_cleared BEFORE UPDATE OF id ON profiles WHEN NEW.id IS NULL
BEGIN
    SELECT RAISE(ABORT, 'profiles.id may not be NULL');
END;
