//! Events in (SPEC 7): what the auth service publishes, acted on by one subscriber per
//! instance. Every instance receives every message, so every action is idempotent:
//!
//! * `user:created {"user_id", "username", "email", "timestamp"}`: the empty profile,
//!   inserted only if absent (one instance's insert wins; the others find it), with the
//!   e-mail when it is valid and no other profile holds it, else without.
//! * `user:updated {"user_id", "updated_fields", "email"?}`: the stored e-mail replaced
//!   when one is given and differs (a conditional update: one instance changes the row,
//!   one `profile:updated` goes out), and every cache entry of the user invalidated,
//!   through the write path (an outbox row, applied after the commit).
//! * `user:deactivated {"user_id"}`: every cache entry of the user invalidated, the same way.
//!
//! A message that is not a JSON object, has no valid `user_id`, or arrives on another
//! channel is logged (never its e-mail) and counted in
//! `events_in_rejected_total{channel, reason}`; an action the database refused is
//! counted in `events_in_failed_total{channel}`. Nothing here stops the subscriber.
//!
//! Reference: `docs/events.md`.

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::ProfileService;
use crate::db::{DbError, UserSync};
use crate::domain::{Email, NewProfile, UserId};
use crate::redis::{Incoming, RedisClient};

/// `user:created`.
pub const USER_CREATED: &str = "user:created";
/// `user:updated`.
pub const USER_UPDATED: &str = "user:updated";
/// `user:deactivated`.
pub const USER_DEACTIVATED: &str = "user:deactivated";
/// The channels acted on.
pub const EVENT_CHANNELS: [&str; 3] = [USER_CREATED, USER_UPDATED, USER_DEACTIVATED];
/// What the subscriber listens to: every `user:` channel, so that one this service does
/// not know (a new kind of event) is seen and counted rather than silently missed.
const SUBSCRIBED: &str = "user:*";

/// Why a message was not acted on (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejected {
    UnknownChannel,
    NotJson,
    NotAnObject,
    MissingUserId,
    InvalidUserId,
}

impl Rejected {
    fn as_str(self) -> &'static str {
        match self {
            Self::UnknownChannel => "unknown_channel",
            Self::NotJson => "malformed_json",
            Self::NotAnObject => "not_an_object",
            Self::MissingUserId => "missing_user_id",
            Self::InvalidUserId => "invalid_user_id",
        }
    }
}

/// A message worth acting on.
#[derive(Debug)]
struct Parsed {
    channel: &'static str,
    user_id: UserId,
    body: serde_json::Map<String, Value>,
}

/// Runs the subscriber until `stop` (see [`crate::redis::Subscriber::run`]).
pub async fn run_subscriber(service: ProfileService, redis: RedisClient, stop: CancellationToken) {
    redis
        .subscriber()
        .run(&[SUBSCRIBED], stop, |msg| {
            let service = service.clone();
            async move { service.handle_event(msg).await }
        })
        .await;
}

fn parse(msg: &Incoming) -> Result<Parsed, Rejected> {
    let channel = EVENT_CHANNELS
        .iter()
        .copied()
        .find(|c| *c == msg.channel)
        .ok_or(Rejected::UnknownChannel)?;
    let value: Value = serde_json::from_slice(&msg.payload).map_err(|_| Rejected::NotJson)?;
    let Value::Object(body) = value else {
        return Err(Rejected::NotAnObject);
    };
    let user_id = match body.get("user_id") {
        None | Some(Value::Null) => return Err(Rejected::MissingUserId),
        Some(Value::String(s)) => s.parse::<UserId>().map_err(|_| Rejected::InvalidUserId)?,
        Some(_) => return Err(Rejected::InvalidUserId),
    };
    Ok(Parsed {
        channel,
        user_id,
        body,
    })
}

/// The message's e-mail when it carries a valid one. An invalid one is noted (never
/// logged: it is personal data).
fn email_of(parsed: &Parsed) -> Option<Email> {
    match parsed.body.get("email") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match Email::parse(s) {
            Ok(e) => Some(e),
            Err(_) => {
                note(parsed.channel, "invalid_email");
                tracing::info!(channel = parsed.channel, user_id = %parsed.user_id, "event carries an invalid e-mail; not stored");
                None
            }
        },
        Some(_) => {
            note(parsed.channel, "invalid_email");
            None
        }
    }
}

/// Counts something about a message that was still acted on.
fn note(channel: &'static str, what: &'static str) {
    metrics::counter!("events_in_notes_total", "channel" => channel, "what" => what).increment(1);
}

impl ProfileService {
    /// Acts on one message from the auth service; never fails (see the module header).
    pub async fn handle_event(&self, msg: Incoming) {
        let parsed = match parse(&msg) {
            Ok(p) => p,
            Err(reason) => {
                // An unknown channel is not a label value we want unbounded.
                let channel = EVENT_CHANNELS
                    .iter()
                    .copied()
                    .find(|c| *c == msg.channel)
                    .unwrap_or("other");
                metrics::counter!("events_in_rejected_total", "channel" => channel, "reason" => reason.as_str())
                    .increment(1);
                tracing::warn!(
                    channel,
                    reason = reason.as_str(),
                    bytes = msg.payload.len(),
                    "event rejected"
                );
                return;
            }
        };
        let (channel, id) = (parsed.channel, parsed.user_id);
        let outcome = match channel {
            USER_CREATED => self.on_user_created(&parsed).await,
            USER_UPDATED => self.on_user_updated(&parsed).await,
            _ => self.sync_user(id, None).await.map(|_| "invalidated"),
        };
        match outcome {
            Ok(what) => {
                metrics::counter!("events_in_total", "channel" => channel, "outcome" => what)
                    .increment(1);
                tracing::debug!(channel, user_id = %id, outcome = what, "event applied");
            }
            Err(e) => {
                metrics::counter!("events_in_failed_total", "channel" => channel).increment(1);
                tracing::warn!(channel, user_id = %id, error = %e, "event not applied");
            }
        }
    }

    async fn on_user_created(&self, parsed: &Parsed) -> Result<&'static str, DbError> {
        let id = parsed.user_id;
        let email = email_of(parsed);
        let with_email = email.is_some();
        let new = NewProfile {
            email,
            ..NewProfile::default()
        };
        match self.create(id, &new).await {
            Ok(_) => Ok("created"),
            Err(DbError::AlreadyExists) => Ok("exists"),
            Err(DbError::EmailTaken) if with_email => {
                note(parsed.channel, "email_taken");
                tracing::info!(user_id = %id, "user:created e-mail held by another profile; profile created without it");
                match self.create(id, &NewProfile::default()).await {
                    Ok(_) => Ok("created"),
                    Err(DbError::AlreadyExists) => Ok("exists"),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn on_user_updated(&self, parsed: &Parsed) -> Result<&'static str, DbError> {
        let id = parsed.user_id;
        let email = email_of(parsed);
        match self.sync_user(id, email.as_ref()).await {
            Ok(UserSync::EmailChanged) => Ok("email_updated"),
            Ok(UserSync::Unchanged) => Ok("invalidated"),
            Err(DbError::EmailTaken) => {
                note(parsed.channel, "email_taken");
                tracing::warn!(user_id = %id, "user:updated e-mail held by another profile; not stored");
                self.sync_user(id, None).await.map(|_| "invalidated")
            }
            Err(e) => Err(e),
        }
    }

    /// Sets the stored e-mail when `email` differs and invalidates every cache entry of the
    /// user, through the write path (outbox row, invalidation, event).
    pub async fn sync_user(&self, id: UserId, email: Option<&Email>) -> Result<UserSync, DbError> {
        super::count_query("sync_user");
        let w = self.repo.sync_user(id, email).await?;
        Ok(self
            .after_write(w, id, crate::db::InvalidationScope::All)
            .await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(channel: &str, payload: &str) -> Incoming {
        Incoming {
            channel: channel.into(),
            payload: payload.as_bytes().to_vec(),
        }
    }

    #[test]
    fn rejects_what_it_cannot_act_on() {
        let id = UserId::random();
        let cases = [
            (msg("user:created", "{"), Rejected::NotJson),
            (msg("user:created", "[1]"), Rejected::NotAnObject),
            (msg("user:updated", "{}"), Rejected::MissingUserId),
            (
                msg("user:updated", r#"{"user_id": null}"#),
                Rejected::MissingUserId,
            ),
            (
                msg("user:deactivated", r#"{"user_id": "x"}"#),
                Rejected::InvalidUserId,
            ),
            (
                msg("user:deactivated", r#"{"user_id": 7}"#),
                Rejected::InvalidUserId,
            ),
            (
                msg("user:other", &format!(r#"{{"user_id": "{id}"}}"#)),
                Rejected::UnknownChannel,
            ),
        ];
        for (m, want) in cases {
            assert_eq!(parse(&m).unwrap_err(), want, "{m:?}");
        }
        let ok = parse(&msg(
            "user:deactivated",
            &format!(r#"{{"user_id": "{id}"}}"#),
        ))
        .unwrap();
        assert_eq!((ok.channel, ok.user_id), ("user:deactivated", id));
    }
}
