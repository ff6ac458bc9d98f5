//! Use cases: what each route does, over the repository and the cache.
//! Handlers call exactly one function here; nothing here knows about HTTP.

mod events_in;
mod events_out;
mod flight;
mod login;
mod outbox;
mod profiles;
mod reads;
mod tasks;

pub use events_in::EVENT_CHANNELS;
pub use events_out::EventsOut;
pub use login::LoginRecorder;
pub use outbox::DrainError;
pub use profiles::{BatchOutcome, Lookup, ProfileService};
pub(crate) use profiles::{count_query, dedupe};
pub use reads::ProfileJson;
pub use tasks::{Named, spawn_background, warn_about_eviction};
