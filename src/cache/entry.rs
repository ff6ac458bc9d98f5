//! What a cache entry holds and how long it lives: the full value plus `cached_at`, encoded
//! the same way by every writer, with a TTL that jitter only shortens.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{JsonObject, Profile, ProfileEntryShape, UserId, timestamp};

/// The entry TTL for a value of `id` cached at `cached_at`: `ttl` minus a jitter in
/// `[0, ttl * jitter_percent / 100]` that depends only on `(id, cached_at)`.
pub fn entry_ttl(
    ttl: Duration,
    jitter_percent: u64,
    id: UserId,
    cached_at: DateTime<Utc>,
) -> Duration {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let max_jitter = ttl_ms / 100 * jitter_percent + ttl_ms % 100 * jitter_percent / 100;
    if max_jitter == 0 {
        return ttl;
    }
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let millis = cached_at.timestamp_millis().to_le_bytes();
    for b in id.as_uuid().as_bytes().iter().chain(millis.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Duration::from_millis(ttl_ms - h % (max_jitter + 1))
}

/// Now, to the millisecond (what `cached_at` carries and the jitter hashes).
pub fn now_millis() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

/// A value kind the cache stores, and how its entry is encoded and decoded.
pub trait Cached: Clone + Send + Sync + Sized + 'static {
    /// The entry: the value plus `cached_at`.
    fn encode(&self, cached_at: DateTime<Utc>) -> Option<String>;
    /// The value and its `cached_at`; `None` for anything that is not a whole entry.
    fn decode(raw: &str) -> Option<(Self, DateTime<Utc>)>;
}

#[derive(Serialize)]
struct ProfileOut<'a> {
    #[serde(flatten)]
    profile: &'a Profile,
    #[serde(with = "timestamp")]
    cached_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct ProfileIn {
    #[serde(flatten)]
    profile: Profile,
    #[serde(with = "timestamp")]
    cached_at: DateTime<Utc>,
}

/// A cached profile entry of `id` that can be served as it is (the profile JSON with
/// `cached_at`, exactly what a hit's `"profile"` shows): its `cached_at`, parsed and as
/// written. `None` for anything else (another writer's format, another user's profile).
/// The shape checked is made with `Profile` by the list of fields, so an entry this
/// service wrote always passes.
pub fn profile_entry(raw: &str, id: UserId) -> Option<(DateTime<Utc>, String)> {
    let shape: ProfileEntryShape<'_> = serde_json::from_str(raw).ok()?;
    if shape.user_id.parse::<UserId>().ok()? != id {
        return None;
    }
    uuid::Uuid::try_parse(&shape.id).ok()?;
    let at = DateTime::parse_from_rfc3339(&shape.cached_at)
        .ok()?
        .to_utc();
    Some((at, shape.cached_at.into_owned()))
}

#[derive(Serialize, Deserialize)]
struct DocumentEntry {
    data: JsonObject,
    #[serde(with = "timestamp")]
    cached_at: DateTime<Utc>,
}

impl Cached for Profile {
    fn encode(&self, cached_at: DateTime<Utc>) -> Option<String> {
        serde_json::to_string(&ProfileOut {
            profile: self,
            cached_at,
        })
        .ok()
    }

    fn decode(raw: &str) -> Option<(Self, DateTime<Utc>)> {
        serde_json::from_str::<ProfileIn>(raw)
            .ok()
            .map(|e| (e.profile, e.cached_at))
    }
}

impl Cached for JsonObject {
    fn encode(&self, cached_at: DateTime<Utc>) -> Option<String> {
        serde_json::to_string(&DocumentEntry {
            data: self.clone(),
            cached_at,
        })
        .ok()
    }

    fn decode(raw: &str) -> Option<(Self, DateTime<Utc>)> {
        serde_json::from_str::<DocumentEntry>(raw)
            .ok()
            .map(|e| (e.data, e.cached_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_only_shortens_and_is_deterministic() {
        let ttl = Duration::from_secs(300);
        let id = UserId::random();
        for i in 0..1000 {
            let at = DateTime::from_timestamp_millis(1_700_000_000_000 + i * 7).unwrap();
            let t = entry_ttl(ttl, 10, id, at);
            assert!(t <= ttl && t >= Duration::from_secs(270), "{t:?}");
            assert_eq!(t, entry_ttl(ttl, 10, id, at));
        }
        assert_eq!(entry_ttl(ttl, 0, id, Utc::now()), ttl);
    }

    #[test]
    fn entries_round_trip() {
        let p = Profile {
            first_name: Some("太郎".into()),
            name: Some("\"quoted\"".into()),
            ..Profile::blank(UserId::random(), now_millis())
        };
        let at = now_millis();
        let raw = p.encode(at).unwrap();
        assert!(raw.contains("\"cached_at\""));
        assert_eq!(Profile::decode(&raw), Some((p, at)));
        let mut d = JsonObject::new();
        d.insert("theme".into(), serde_json::json!("dark"));
        let raw = d.encode(at).unwrap();
        assert_eq!(JsonObject::decode(&raw), Some((d, at)));
    }

    #[test]
    fn entries_with_every_field_set_are_served_as_they_are() {
        let at = now_millis();
        for p in crate::seed::fake_profiles(200) {
            let raw = p.encode(at).unwrap();
            assert!(profile_entry(&raw, p.user_id).is_some(), "{raw}");
        }
    }

    #[test]
    fn profile_entries_are_checked_before_they_are_served_as_they_are() {
        let p = Profile {
            first_name: Some("tab\there \"q\"".into()),
            ..Profile::blank(UserId::random(), now_millis())
        };
        let at = now_millis();
        let raw = p.encode(at).unwrap();
        let (parsed, text) = profile_entry(&raw, p.user_id).expect("our own entry");
        assert_eq!(parsed, at);
        assert_eq!(text, crate::domain::timestamp::format(&at));
        assert_eq!(
            profile_entry(&raw, UserId::random()),
            None,
            "another user's"
        );
        let mut v: serde_json::Value = serde_json::from_str(&raw).unwrap();
        v["first_name"] = serde_json::json!(5);
        assert_eq!(
            profile_entry(&v.to_string(), p.user_id),
            None,
            "a wrong type"
        );
        v["first_name"] = serde_json::json!(null);
        v["extra"] = serde_json::json!(1);
        assert_eq!(
            profile_entry(&v.to_string(), p.user_id),
            None,
            "an unknown field"
        );
        v.as_object_mut().unwrap().remove("extra");
        let whole = v.clone();
        v.as_object_mut().unwrap().remove("id");
        assert_eq!(
            profile_entry(&v.to_string(), p.user_id),
            None,
            "an entry from before profiles had ids"
        );
        let mut v = whole;
        v.as_object_mut().unwrap().remove("updated_at");
        assert_eq!(
            profile_entry(&v.to_string(), p.user_id),
            None,
            "a missing field"
        );
    }
}
