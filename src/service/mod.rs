//! Use cases: what each route does, over the repository and the cache.
//! Handlers call exactly one function here; nothing here knows about HTTP.

mod login;
mod profiles;

pub use login::LoginRecorder;
pub use profiles::{BatchOutcome, Lookup, ProfileService};
pub(crate) use profiles::{count_query, dedupe};
