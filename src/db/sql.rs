//! SQL text, built once at compile time. Where PostgreSQL and SQLite agree (both take
//! `$n` parameters, `ON CONFLICT`, `RETURNING`) a statement is written here once; the few
//! that differ live with their backend.

use crate::domain::DocumentKind;

/// The columns of `profiles`, in the order of [`crate::domain::Profile`], as an insert
/// names them.
macro_rules! profile_columns {
    () => {
        "id, user_id, first_name, last_name, name, email, phone, address, date_of_birth, \
         last_login, created_at, updated_at"
    };
}
pub(super) use profile_columns;

/// The same columns as a read answers them. A table taken over from the Python service
/// keeps its nullable timestamps (its writers may still send NULL); such a row is served
/// with the other timestamp, or the epoch when both are missing, rather than failing to
/// decode. This service's own schema has them NOT NULL, so there it changes nothing.
macro_rules! profile_select {
    () => {
        "id, user_id, first_name, last_name, name, email, phone, address, date_of_birth, \
         last_login, \
         COALESCE(created_at, updated_at, '1970-01-01T00:00:00.000000Z') AS created_at, \
         COALESCE(updated_at, created_at, '1970-01-01T00:00:00.000000Z') AS updated_at"
    };
}
pub(super) use profile_select;

/// $1 id.
pub const FETCH_PROFILE: &str = concat!(
    "SELECT ",
    profile_select!(),
    " FROM profiles WHERE user_id = $1"
);

/// $1 logged in after, $2 limit.
pub const RECENT_LOGINS: &str = concat!(
    "SELECT ",
    profile_select!(),
    " FROM profiles WHERE last_login > $1 ORDER BY last_login DESC, user_id LIMIT $2"
);

/// $1 the new profile id, $2 the user id, $3–$9 the fields, $10 now (created and
/// updated). No row back when the user id exists; an e-mail held by another row raises the
/// unique violation.
pub const INSERT_PROFILE: &str = concat!(
    "INSERT INTO profiles (",
    profile_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10, $10) \
     ON CONFLICT (user_id) DO NOTHING RETURNING ",
    profile_select!()
);

/// $1 id, then a flag and a value per field ($2 … $15), $16 now. One static statement
/// whatever the patch, so it is prepared once per connection.
pub const APPLY_PATCH: &str = concat!(
    "UPDATE profiles SET \
       first_name    = CASE WHEN $2  THEN $3  ELSE first_name    END, \
       last_name     = CASE WHEN $4  THEN $5  ELSE last_name     END, \
       name          = CASE WHEN $6  THEN $7  ELSE name          END, \
       email         = CASE WHEN $8  THEN $9  ELSE email         END, \
       phone         = CASE WHEN $10 THEN $11 ELSE phone         END, \
       address       = CASE WHEN $12 THEN $13 ELSE address       END, \
       date_of_birth = CASE WHEN $14 THEN $15 ELSE date_of_birth END, \
       updated_at    = $16 \
     WHERE user_id = $1 RETURNING ",
    profile_select!()
);

/// $1 id; answers the deleted row.
pub const DELETE_PROFILE: &str = concat!(
    "DELETE FROM profiles WHERE user_id = $1 RETURNING ",
    profile_select!()
);

/// $1 id, $2 scope, $3 now; answers the row id.
pub const INSERT_INVALIDATION: &str =
    "INSERT INTO cache_invalidations (user_id, scope, created_at) VALUES ($1, $2, $3) RETURNING id";

/// $1 id, $2 scope, $3 now, $4 event channel, $5 event payload; answers the row id.
pub const INSERT_OUTBOX_ROW: &str = "INSERT INTO cache_invalidations \
     (user_id, scope, created_at, event, payload) VALUES ($1, $2, $3, $4, $5) RETURNING id";

/// $1 id: 1 when an event of this user is still in the outbox, else 0.
pub const EVENT_PENDING: &str = "SELECT count(*) FROM (SELECT 1 FROM cache_invalidations \
     WHERE user_id = $1 AND event IS NOT NULL LIMIT 1) AS pending";

/// $1 after this id, $2 limit; oldest first.
pub const PENDING_AFTER: &str = "SELECT id, user_id, scope, event, payload, created_at \
     FROM cache_invalidations WHERE id > $1 ORDER BY id LIMIT $2";

/// $1 id, $2 the e-mail, $3 now: sets it when it differs; answers the row when it did.
pub const SYNC_EMAIL: &str = concat!(
    "UPDATE profiles SET email = $2, updated_at = $3 \
     WHERE user_id = $1 AND (email IS NULL OR email <> $2) RETURNING ",
    profile_columns!()
);

macro_rules! fetch_document {
    ($table:literal) => {
        concat!(
            "SELECT d.data, d.updated_at FROM profiles p LEFT JOIN ",
            $table,
            " d ON d.user_id = p.user_id WHERE p.user_id = $1"
        )
    };
}

macro_rules! replace_document {
    ($table:literal) => {
        concat!(
            "INSERT INTO ",
            $table,
            " (user_id, data, updated_at) VALUES ($1, $2, $3) ON CONFLICT (user_id) DO UPDATE \
             SET data = excluded.data, updated_at = excluded.updated_at RETURNING data, updated_at"
        )
    };
}

macro_rules! delete_document {
    ($table:literal) => {
        concat!("DELETE FROM ", $table, " WHERE user_id = $1")
    };
}

/// $1 id: the document (NULLs when never written), or no row when there is no profile.
pub fn fetch_document(kind: DocumentKind) -> &'static str {
    match kind {
        DocumentKind::Settings => fetch_document!("settings"),
        DocumentKind::Preferences => fetch_document!("preferences"),
    }
}

/// $1 id, $2 data, $3 now; answers what was stored. A missing profile raises the foreign
/// key violation, race-free against a concurrent delete.
pub fn replace_document(kind: DocumentKind) -> &'static str {
    match kind {
        DocumentKind::Settings => replace_document!("settings"),
        DocumentKind::Preferences => replace_document!("preferences"),
    }
}

/// $1 id.
pub fn delete_document(kind: DocumentKind) -> &'static str {
    match kind {
        DocumentKind::Settings => delete_document!("settings"),
        DocumentKind::Preferences => delete_document!("preferences"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_statements_name_their_table() {
        for kind in [DocumentKind::Settings, DocumentKind::Preferences] {
            let table = kind.as_str();
            assert!(fetch_document(kind).contains(&format!("JOIN {table} d")));
            assert!(replace_document(kind).starts_with(&format!("INSERT INTO {table} ")));
            assert!(delete_document(kind).starts_with(&format!("DELETE FROM {table} ")));
        }
    }
}
