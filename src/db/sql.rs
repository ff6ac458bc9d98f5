//! SQL text. Where PostgreSQL and SQLite agree (both take `$n` parameters, `ON CONFLICT`,
//! `RETURNING`) a statement is written here once; the few that differ live with their
//! backend. The statements on `profiles` name its columns from the list of fields
//! ([`FIELDS`]), so they are built once, on first use, rather than at compile time.

use std::fmt::Write;
use std::sync::LazyLock;

use crate::domain::{DocumentKind, FIELDS};

/// The service's own columns before the fields (PostgreSQL types, as the batch insert
/// casts them): the profile id and the owner's id.
const LEADING: [(&str, &str); 2] = [("id", "uuid"), ("user_id", "uuid")];
/// The service's own columns after the fields.
const TRAILING: [(&str, &str); 3] = [
    ("last_login", "timestamptz"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
];

/// Every column of `profiles` with its PostgreSQL type, in the order of
/// [`crate::domain::Profile`].
pub fn columns() -> impl Iterator<Item = (&'static str, &'static str)> {
    LEADING
        .into_iter()
        .chain(FIELDS.iter().map(|f| (f.name, f.postgres)))
        .chain(TRAILING)
}

/// A statement built on first use; `&'static str`, as sqlx takes it.
pub struct Sql(LazyLock<String>);

impl Sql {
    pub(super) const fn new(build: fn() -> String) -> Self {
        Self(LazyLock::new(build))
    }

    /// The statement's text.
    pub fn get(&'static self) -> &'static str {
        self.0.as_str()
    }
}

/// The columns of `profiles`, as an insert names them.
pub fn column_list() -> String {
    columns().map(|(c, _)| c).collect::<Vec<_>>().join(", ")
}

/// The same columns as a read answers them. A table taken over from the Python service
/// keeps its nullable timestamps (its writers may still send NULL); such a row is served
/// with the other timestamp, or the epoch when both are missing, rather than failing to
/// decode. This service's own schema has them NOT NULL, so there it changes nothing.
pub fn select_list() -> String {
    let mut sql = String::new();
    for (c, _) in columns() {
        if !sql.is_empty() {
            sql.push_str(", ");
        }
        match c {
            "created_at" => sql.push_str(
                "COALESCE(created_at, updated_at, '1970-01-01T00:00:00.000000Z') AS created_at",
            ),
            "updated_at" => sql.push_str(
                "COALESCE(updated_at, created_at, '1970-01-01T00:00:00.000000Z') AS updated_at",
            ),
            other => sql.push_str(other),
        }
    }
    sql
}

/// $1 id.
pub static FETCH_PROFILE: Sql =
    Sql::new(|| format!("SELECT {} FROM profiles WHERE user_id = $1", select_list()));

/// $1 logged in after, $2 limit.
pub static RECENT_LOGINS: Sql = Sql::new(|| {
    format!(
        "SELECT {} FROM profiles WHERE last_login > $1 \
         ORDER BY last_login DESC, user_id LIMIT $2",
        select_list()
    )
});

/// $1 the new profile id, $2 the user id, then each field in order, then now (created
/// and updated). No row back when the user id exists; an e-mail held by another row raises
/// the unique violation.
pub static INSERT_PROFILE: Sql = Sql::new(|| {
    let mut values = String::from("$1, $2");
    for n in 3..3 + FIELDS.len() {
        let _ = write!(values, ", ${n}");
    }
    let now = 3 + FIELDS.len();
    format!(
        "INSERT INTO profiles ({}) VALUES ({values}, NULL, ${now}, ${now}) \
         ON CONFLICT (user_id) DO NOTHING RETURNING {}",
        column_list(),
        select_list()
    )
});

/// $1 id, then a flag and a value per field in order, then now. One static statement
/// whatever the patch, so it is prepared once per connection.
pub static APPLY_PATCH: Sql = Sql::new(|| {
    let mut sql = String::from("UPDATE profiles SET ");
    let mut n = 2;
    for f in FIELDS {
        let name = f.name;
        let _ = write!(
            sql,
            "{name} = CASE WHEN ${n} THEN ${} ELSE {name} END, ",
            n + 1
        );
        n += 2;
    }
    let _ = write!(
        sql,
        "updated_at = ${n} WHERE user_id = $1 RETURNING {}",
        select_list()
    );
    sql
});

/// $1 id; answers the deleted row.
pub static DELETE_PROFILE: Sql = Sql::new(|| {
    format!(
        "DELETE FROM profiles WHERE user_id = $1 RETURNING {}",
        select_list()
    )
});

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
pub static SYNC_EMAIL: Sql = Sql::new(|| {
    format!(
        "UPDATE profiles SET email = $2, updated_at = $3 \
         WHERE user_id = $1 AND (email IS NULL OR email <> $2) RETURNING {}",
        column_list()
    )
});

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

    /// The `$n` a statement names, each once, in increasing order.
    fn placeholders(sql: &str) -> Vec<usize> {
        let mut seen = Vec::new();
        for part in sql.split('$').skip(1) {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            let n = digits.parse().expect("a number after $");
            if !seen.contains(&n) {
                seen.push(n);
            }
        }
        seen.sort_unstable();
        seen
    }

    #[test]
    fn profile_statements_number_every_field() {
        let fields = FIELDS.len();
        // Insert: two ids, the fields, now.
        assert_eq!(
            placeholders(INSERT_PROFILE.get()),
            (1..=fields + 3).collect::<Vec<_>>()
        );
        // Patch: the id, a flag and a value per field, now; each field set from its own pair.
        let patch = APPLY_PATCH.get();
        assert_eq!(
            placeholders(patch),
            (1..=2 * fields + 2).collect::<Vec<_>>()
        );
        for (i, f) in FIELDS.iter().enumerate() {
            let set = format!(
                "{0} = CASE WHEN ${1} THEN ${2} ELSE {0} END",
                f.name,
                2 * i + 2,
                2 * i + 3
            );
            assert!(patch.contains(&set), "{set} missing from {patch}");
        }
        assert!(patch.contains(&format!("updated_at = ${}", 2 * fields + 2)));
        assert_eq!(column_list().split(", ").count(), fields + 5);
    }

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
