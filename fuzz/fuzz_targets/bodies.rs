//! Request bodies: the profile create and patch inputs and the settings/preferences
//! documents, as the handlers parse them (serde_json, then validation). Nothing may
//! panic; what validates respects the limits, and survives the trip through the cache
//! (serialized and parsed back unchanged).
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use user_api::domain::{
    Document, JsonObject, MAX_ADDRESS_CHARS, MAX_TEXT_CHARS, Profile, ProfileId, ProfileInput,
    ProfilePatchInput, UserId,
};

fn within(v: &Option<String>, max: usize) {
    if let Some(s) = v {
        assert!(s.chars().count() <= max && !s.contains('\0'), "{s:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(input) = serde_json::from_slice::<ProfileInput>(data)
        && let Ok((id, p)) = input.validate()
    {
        for f in [&p.first_name, &p.last_name, &p.name, &p.phone] {
            within(f, MAX_TEXT_CHARS);
        }
        within(&p.address, MAX_ADDRESS_CHARS);
        // The cache stores the full profile as JSON; it must read back as it was.
        let at = Utc.timestamp_opt(1_700_000_000, 123_456_000).unwrap();
        let profile = Profile::from_new(
            ProfileId::random(),
            id.unwrap_or_else(UserId::random),
            p,
            at,
        );
        let text = serde_json::to_string(&profile).expect("serializes");
        let back: Profile = serde_json::from_str(&text).expect("parses back");
        assert_eq!(back, profile);
    }
    if let Ok(patch) = serde_json::from_slice::<ProfilePatchInput>(data)
        && let Ok(p) = patch.validate()
    {
        for f in [&p.first_name, &p.last_name, &p.name, &p.phone] {
            within(&f.new_value().cloned(), MAX_TEXT_CHARS);
        }
        within(&p.address.new_value().cloned(), MAX_ADDRESS_CHARS);
    }
    if let Ok(doc) = serde_json::from_slice::<JsonObject>(data)
        && Document::validate(&doc).is_ok()
    {
        // The cached entry wraps the document one level deeper; it must still parse.
        let cached = json!({"data": doc, "cached_at": "2025-01-01T00:00:00Z"});
        let text = serde_json::to_string(&cached).expect("serializes");
        let back: Value =
            serde_json::from_str(&text).expect("a valid document's cache entry parses");
        assert_eq!(back["data"], Value::Object(doc));
    }
});
