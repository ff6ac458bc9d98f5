//! The one table of limited routes: route template → rate-limit policy → the cache entry
//! a read serves. The admission layer, the read handlers and the request metrics all key on
//! the same route templates (axum's `MatchedPath`, never the raw path, so ids in a path
//! cannot mint new counters or series).

use axum::http::Method;

use crate::cache::Kind;
use crate::domain::DocumentKind;
use crate::ratelimit::Policy;

/// How one limited route template is counted and read.
struct Row {
    template: &'static str,
    /// The policy of `GET` and `HEAD` (axum serves `HEAD` with the `GET` handler).
    read: Policy,
    /// The policy of `POST`.
    post: Policy,
    /// The policy of every other method (405s included, so the default policy can never
    /// share a counter key with a named one).
    other: Policy,
    /// The entry a `GET` serves, looked at in the admission round trip.
    entry: Option<Kind>,
}

const fn row(template: &'static str, read: Policy, write: Policy, entry: Option<Kind>) -> Row {
    Row {
        template,
        read,
        post: write,
        other: write,
        entry,
    }
}

use Policy::{ProfilesBatch as Batch, ProfilesRead as Read, ProfilesUpdate as Update};

const PROFILE: Option<Kind> = Some(Kind::Profile);

/// Every route with a named policy; any other `/api/` route is `default`, keyed by its
/// template.
const TABLE: &[Row] = &[
    row("/api/profiles/{user_id}", Read, Update, PROFILE),
    row("/api/profiles/me", Read, Update, PROFILE),
    // The stack's alias of `/api/profiles/me` (SPEC 7).
    row("/api/v1/profiles/me", Read, Update, PROFILE),
    row("/profile", Read, Update, PROFILE),
    row(
        "/api/profiles/{user_id}/settings",
        Read,
        Update,
        Some(Kind::Document(DocumentKind::Settings)),
    ),
    row(
        "/api/profiles/{user_id}/preferences",
        Read,
        Update,
        Some(Kind::Document(DocumentKind::Preferences)),
    ),
    // `/api/profiles` is the read policy's key: a stray method on it counts there.
    Row {
        template: "/api/profiles",
        read: Read,
        post: Update,
        other: Read,
        entry: None,
    },
    row("/api/profiles/batch", Batch, Batch, None),
];

/// What the table says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteClass<'t> {
    /// The rate-limit policy.
    pub policy: Policy,
    /// The `<endpoint>` of its counter key.
    pub endpoint: &'t str,
    /// For a `GET`, the entry it serves.
    pub entry: Option<Kind>,
}

/// The class of a request by method and route template; `None` for routes that are not
/// limited (ops routes, docs).
pub fn classify<'t>(method: &Method, template: &'t str) -> Option<RouteClass<'t>> {
    let Some(row) = TABLE.iter().find(|r| r.template == template) else {
        return template.starts_with("/api/").then_some(RouteClass {
            policy: Policy::Default,
            endpoint: template,
            entry: None,
        });
    };
    let policy = if *method == Method::GET || *method == Method::HEAD {
        row.read
    } else if *method == Method::POST {
        row.post
    } else {
        row.other
    };
    Some(RouteClass {
        policy,
        endpoint: policy.endpoint(),
        entry: if *method == Method::GET {
            row.entry
        } else {
            None
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(m: Method, t: &str) -> Option<(&'static str, String)> {
        classify(&m, t).map(|c| (c.policy.name(), c.endpoint.to_owned()))
    }

    #[test]
    fn routes_map_to_their_policies() {
        let read = Some(("profiles-read", "/api/profiles".to_owned()));
        let update = Some(("profiles-update", "/api/profiles/update".to_owned()));
        for t in [
            "/api/profiles/{user_id}",
            "/api/profiles/me",
            "/api/v1/profiles/me",
            "/api/profiles/{user_id}/settings",
            "/api/profiles/{user_id}/preferences",
            "/profile",
        ] {
            assert_eq!(class(Method::GET, t), read, "{t}");
            assert_eq!(class(Method::HEAD, t), read, "{t}");
            for m in [Method::PUT, Method::PATCH, Method::DELETE, Method::POST] {
                assert_eq!(class(m.clone(), t), update, "{m} {t}");
            }
        }
        assert_eq!(class(Method::POST, "/api/profiles"), update);
        assert_eq!(class(Method::GET, "/api/profiles"), read);
        assert_eq!(
            class(Method::POST, "/api/profiles/batch"),
            Some(("profiles-batch", "/api/profiles/batch".to_owned()))
        );
        assert_eq!(
            class(Method::GET, "/api/profiles/batch").unwrap().0,
            "profiles-batch"
        );
        assert_eq!(
            class(Method::POST, "/api/admin/cache/invalidate/{user_id}"),
            Some((
                "default",
                "/api/admin/cache/invalidate/{user_id}".to_owned()
            ))
        );
        assert_eq!(class(Method::GET, "/health"), None);
        assert_eq!(class(Method::GET, "/metrics"), None);
        assert_eq!(class(Method::GET, "/openapi.json"), None);
    }

    #[test]
    fn only_gets_look_at_an_entry() {
        let get = classify(&Method::GET, "/api/profiles/{user_id}/settings").unwrap();
        assert_eq!(get.entry, Some(Kind::Document(DocumentKind::Settings)));
        assert_eq!(
            classify(&Method::HEAD, "/api/profiles/{user_id}")
                .unwrap()
                .entry,
            None
        );
        assert_eq!(
            classify(&Method::PUT, "/api/profiles/me").unwrap().entry,
            None
        );
    }
}
