-- Profiles, their two JSON documents, and the cache-invalidation outbox.

CREATE TABLE profiles (
    user_id       uuid        NOT NULL,
    first_name    text,
    last_name     text,
    name          text,
    email         text,
    phone         text,
    address       text,
    date_of_birth date,
    last_login    timestamptz,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    -- The repository tells "id exists" from "email taken" by these names.
    CONSTRAINT profiles_pkey PRIMARY KEY (user_id)
);

-- E-mail is unique ignoring case; NULLs (no address) never conflict.
CREATE UNIQUE INDEX profiles_email_lower_key ON profiles (lower(email));

-- Prewarm: most recent logins first; most rows never logged in, so keep them out.
CREATE INDEX profiles_last_login_idx ON profiles (last_login DESC) WHERE last_login IS NOT NULL;

CREATE TABLE settings (
    user_id    uuid        NOT NULL PRIMARY KEY REFERENCES profiles (user_id) ON DELETE CASCADE,
    data       jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(data) = 'object'),
    updated_at timestamptz NOT NULL
);

CREATE TABLE preferences (
    user_id    uuid        NOT NULL PRIMARY KEY REFERENCES profiles (user_id) ON DELETE CASCADE,
    data       jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(data) = 'object'),
    updated_at timestamptz NOT NULL
);

-- No foreign key: the row recorded by a delete must outlive the profile.
CREATE TABLE cache_invalidations (
    id         bigserial   PRIMARY KEY,
    user_id    uuid        NOT NULL,
    scope      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
