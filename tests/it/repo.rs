//! The database layer through the `ProfileRepo` trait, against a real PostgreSQL database
//! and a real SQLite file. Each behaviour is written once and run for both backends.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, SubsecRound, TimeDelta, Utc};
use rstest::rstest;
use serde_json::json;
use user_api::db::{
    DbError, InvalidationScope, PoolOptions, PostgresRepo, ProfileRepo, Repo, SqliteRepo,
};

use crate::helpers::{Backend, db};
use user_api::domain::{
    DocumentKind, Email, FieldChange, JsonObject, NewProfile, Profile, ProfilePatch, UserId,
};

fn opts() -> PoolOptions {
    PoolOptions {
        max_connections: 5,
        min_connections: 0,
        acquire_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(5),
    }
}

/// A migrated repository on a fresh database of `backend`, as `user_api::db::connect`
/// opens it.
async fn migrated(backend: Backend) -> Repo {
    let (url, name) = match backend {
        Backend::Postgres => (db::fresh_postgres_url().await, "postgres"),
        Backend::Sqlite => (db::fresh_sqlite_url(), "sqlite"),
    };
    let repo = user_api::db::connect(&url, &opts()).await.expect("connect");
    assert_eq!(repo.backend(), name);
    repo.migrate().await.expect("migrate");
    repo
}

fn email(s: &str) -> Email {
    Email::parse(s).expect("test e-mail is valid")
}

// Every field this test knows; a field added to the list since stays empty.
#[allow(clippy::needless_update)]
fn full_profile(mail: &str) -> NewProfile {
    NewProfile {
        first_name: Some("太郎".into()),
        last_name: Some("山田".into()),
        name: Some("山田太郎".into()),
        email: Some(email(mail)),
        phone: Some("090-1234-5678".into()),
        address: Some("東京都渋谷区神南1-2-3".into()),
        date_of_birth: NaiveDate::from_ymd_opt(1990, 1, 1),
        ..NewProfile::default()
    }
}

async fn pending_scopes(repo: &Repo) -> Vec<(UserId, &'static str)> {
    repo.pending_invalidations(1000)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.user_id, p.scope.as_str()))
        .collect()
}

#[rstest]
#[tokio::test]
async fn crud(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let repo = migrated(backend).await;
    let id = UserId::random();
    assert!(repo.fetch(id).await.unwrap().is_none());

    let new = full_profile("taro@example.com");
    let before = Utc::now();
    let written = repo.create(id, &new).await.unwrap();
    let p = written.value;
    assert!(written.outbox_id > 0);
    assert_eq!(p.user_id, id);
    assert_eq!(p.first_name.as_deref(), Some("太郎"));
    assert_eq!(p.last_name.as_deref(), Some("山田"));
    assert_eq!(p.name.as_deref(), Some("山田太郎"));
    assert_eq!(
        p.email.as_ref().map(Email::as_str),
        Some("taro@example.com")
    );
    assert_eq!(p.phone.as_deref(), Some("090-1234-5678"));
    assert_eq!(p.address.as_deref(), Some("東京都渋谷区神南1-2-3"));
    assert_eq!(p.date_of_birth, NaiveDate::from_ymd_opt(1990, 1, 1));
    assert_eq!(p.last_login, None);
    assert_eq!(p.created_at, p.updated_at);
    assert!(p.created_at >= before.trunc_subsecs(6) && p.created_at <= Utc::now());
    // Exactly what a later read returns, to the microsecond.
    assert_eq!(repo.fetch(id).await.unwrap(), Some(p.clone()));

    // A profile with nothing but its id.
    let bare = UserId::random();
    let b = repo
        .create(bare, &NewProfile::default())
        .await
        .unwrap()
        .value;
    assert_eq!(b.email, None);
    assert_eq!(b.date_of_birth, None);
    assert_eq!(repo.fetch(bare).await.unwrap(), Some(b));

    let deleted = repo.delete(id).await.unwrap();
    assert!(deleted.is_some());
    assert!(repo.fetch(id).await.unwrap().is_none());
    assert!(repo.ping().await.is_ok());
}

#[rstest]
#[tokio::test]
async fn partial_update(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let repo = migrated(backend).await;
    let id = UserId::random();
    let created = repo
        .create(id, &full_profile("p@example.com"))
        .await
        .unwrap()
        .value;

    tokio::time::sleep(Duration::from_millis(5)).await;
    let patch = ProfilePatch {
        phone: FieldChange::Clear,                    // null clears
        name: FieldChange::Set("Taro Yamada".into()), // value sets
        date_of_birth: FieldChange::Clear,
        ..Default::default() // absent leaves alone
    };
    let w = repo.update(id, &patch).await.unwrap().expect("exists");
    let p = w.value;
    assert!(w.outbox_id > 0);
    assert_eq!(p.phone, None);
    assert_eq!(p.date_of_birth, None);
    assert_eq!(p.name.as_deref(), Some("Taro Yamada"));
    assert_eq!(p.first_name, created.first_name);
    assert_eq!(p.last_name, created.last_name);
    assert_eq!(p.email, created.email);
    assert_eq!(p.address, created.address);
    assert_eq!(p.created_at, created.created_at);
    assert!(p.updated_at > created.updated_at);
    assert_eq!(repo.fetch(id).await.unwrap(), Some(p.clone()));

    // An empty patch changes nothing but still bumps updated_at.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let e = repo
        .update(id, &ProfilePatch::default())
        .await
        .unwrap()
        .expect("exists")
        .value;
    assert!(e.updated_at > p.updated_at);
    assert_eq!(
        Profile {
            updated_at: p.updated_at,
            ..e.clone()
        },
        p
    );
    assert_eq!(repo.fetch(id).await.unwrap(), Some(e));

    // Clearing the e-mail, then setting it back.
    let cleared = repo
        .update(
            id,
            &ProfilePatch {
                email: FieldChange::Clear,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(cleared.email, None);
    let set = repo
        .update(
            id,
            &ProfilePatch {
                email: FieldChange::Set(email("new@example.com")),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(
        set.email.as_ref().map(Email::as_str),
        Some("new@example.com")
    );

    assert!(
        repo.update(UserId::random(), &patch)
            .await
            .unwrap()
            .is_none()
    );
}

#[rstest]
#[tokio::test]
async fn email_conflicts(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let repo = migrated(backend).await;
    let a = UserId::random();
    let b = UserId::random();
    repo.create(a, &full_profile("Taro@Example.com"))
        .await
        .unwrap();

    // Same address in another case: taken.
    let err = repo
        .create(b, &full_profile("taro@example.com"))
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::EmailTaken), "{err:?}");
    assert!(repo.fetch(b).await.unwrap().is_none());

    repo.create(b, &full_profile("hanako@example.com"))
        .await
        .unwrap();
    let err = repo
        .update(
            b,
            &ProfilePatch {
                email: FieldChange::Set(email("TARO@EXAMPLE.COM")),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::EmailTaken), "{err:?}");
    // The failed update left b alone.
    let still = repo.fetch(b).await.unwrap().unwrap();
    assert_eq!(
        still.email.as_ref().map(Email::as_str),
        Some("hanako@example.com")
    );

    // Upsert (both paths) respects it too.
    let err = repo
        .upsert(
            b,
            &ProfilePatch {
                email: FieldChange::Set(email("taro@EXAMPLE.com")),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::EmailTaken), "{err:?}");
    let err = repo
        .upsert(
            UserId::random(),
            &ProfilePatch {
                email: FieldChange::Set(email("taro@example.COM")),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::EmailTaken), "{err:?}");

    // A profile may change the case of its own address.
    let own = repo
        .update(
            a,
            &ProfilePatch {
                email: FieldChange::Set(email("taro@example.com")),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(
        own.email.as_ref().map(Email::as_str),
        Some("taro@example.com")
    );

    // Any number of profiles may have no address.
    for _ in 0..3 {
        repo.create(UserId::random(), &NewProfile::default())
            .await
            .unwrap();
    }
    // Once freed, the address can be used by someone else.
    repo.update(
        a,
        &ProfilePatch {
            email: FieldChange::Clear,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    repo.update(
        b,
        &ProfilePatch {
            email: FieldChange::Set(email("TARO@example.com")),
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

#[rstest]
#[tokio::test]
async fn already_exists(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let repo = migrated(backend).await;
    let id = UserId::random();
    let other = UserId::random();
    repo.create(id, &full_profile("one@example.com"))
        .await
        .unwrap();
    repo.create(other, &full_profile("two@example.com"))
        .await
        .unwrap();

    // Same id and the same e-mail (held by that very row): the id wins.
    let err = repo
        .create(id, &full_profile("one@example.com"))
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::AlreadyExists), "{err:?}");
    // Same id, e-mail of another row: still "exists".
    let err = repo
        .create(id, &full_profile("TWO@example.com"))
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::AlreadyExists), "{err:?}");
    // Same id, fresh e-mail.
    let err = repo
        .create(id, &full_profile("three@example.com"))
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::AlreadyExists), "{err:?}");
    let err = repo.create(id, &NewProfile::default()).await.unwrap_err();
    assert!(matches!(err, DbError::AlreadyExists), "{err:?}");

    let p = repo.fetch(id).await.unwrap().unwrap();
    assert_eq!(p.email.as_ref().map(Email::as_str), Some("one@example.com"));
}

#[rstest]
#[tokio::test]
async fn upsert_creates_then_updates(
    #[values(Backend::Postgres, Backend::Sqlite)] backend: Backend,
) {
    let repo = migrated(backend).await;
    let id = UserId::random();
    let patch = ProfilePatch {
        first_name: FieldChange::Set("花子".into()),
        phone: FieldChange::Clear,
        email: FieldChange::Set(email("hanako@example.jp")),
        ..Default::default()
    };
    let w = repo.upsert(id, &patch).await.unwrap();
    let (p, created) = w.value;
    assert!(created);
    assert!(w.outbox_id > 0);
    assert_eq!(p.first_name.as_deref(), Some("花子"));
    assert_eq!(
        p.email.as_ref().map(Email::as_str),
        Some("hanako@example.jp")
    );
    assert_eq!(p.phone, None);
    assert_eq!(p.last_name, None);
    assert_eq!(p.created_at, p.updated_at);
    assert_eq!(repo.fetch(id).await.unwrap(), Some(p.clone()));

    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = ProfilePatch {
        last_name: FieldChange::Set("佐藤".into()),
        email: FieldChange::Clear,
        ..Default::default()
    };
    let (q, created) = repo.upsert(id, &second).await.unwrap().value;
    assert!(!created);
    assert_eq!(q.first_name.as_deref(), Some("花子"), "unsent field kept");
    assert_eq!(q.last_name.as_deref(), Some("佐藤"));
    assert_eq!(q.email, None, "null clears");
    assert_eq!(q.created_at, p.created_at);
    assert!(q.updated_at > p.updated_at);
    assert_eq!(repo.fetch(id).await.unwrap(), Some(q));

    // An empty upsert creates an empty profile.
    let (e, created) = repo
        .upsert(UserId::random(), &ProfilePatch::default())
        .await
        .unwrap()
        .value;
    assert!(created);
    assert_eq!(e.first_name, None);
}

#[rstest]
#[tokio::test]
async fn concurrent_upserts_create_once(
    #[values(Backend::Postgres, Backend::Sqlite)] backend: Backend,
) {
    let repo = migrated(backend).await;
    let id = UserId::random();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move {
            let patch = ProfilePatch {
                name: FieldChange::Set(format!("writer {i}")),
                ..Default::default()
            };
            repo.upsert(id, &patch).await.map(|w| w.value.1)
        }));
    }
    let mut created = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    assert!(repo.fetch(id).await.unwrap().is_some());
}

#[rstest]
#[tokio::test]
async fn delete_cascades_documents(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let repo = migrated(backend).await;
    let id = UserId::random();
    repo.create(id, &full_profile("del@example.com"))
        .await
        .unwrap();
    let doc: JsonObject = json!({"theme": "dark"}).as_object().unwrap().clone();
    for kind in [DocumentKind::Settings, DocumentKind::Preferences] {
        repo.replace_document(kind, id, &doc)
            .await
            .unwrap()
            .unwrap();
    }
    let before = repo.pending_invalidations(100).await.unwrap().len();

    let w = repo.delete(id).await.unwrap().expect("deleted");
    let pending = repo.pending_invalidations(100).await.unwrap();
    assert_eq!(pending.len(), before + 1);
    let last = pending.last().unwrap();
    assert_eq!(
        (last.id, last.user_id, last.scope),
        (w.outbox_id, id, InvalidationScope::All)
    );

    assert!(repo.fetch(id).await.unwrap().is_none());
    for kind in [DocumentKind::Settings, DocumentKind::Preferences] {
        assert!(repo.fetch_document(kind, id).await.unwrap().is_none());
    }
    assert!(
        repo.delete(id).await.unwrap().is_none(),
        "second delete finds nothing"
    );
    assert_eq!(
        repo.pending_invalidations(100).await.unwrap().len(),
        before + 1
    );

    // Re-created under the same id: the old documents are really gone.
    repo.create(id, &full_profile("del@example.com"))
        .await
        .unwrap();
    for kind in [DocumentKind::Settings, DocumentKind::Preferences] {
        let d = repo.fetch_document(kind, id).await.unwrap().unwrap();
        assert!(d.data.is_empty());
        assert_eq!(d.updated_at, None);
    }
}

#[rstest]
#[tokio::test]
async fn documents(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let repo = migrated(backend).await;
    let missing = UserId::random();
    for kind in [DocumentKind::Settings, DocumentKind::Preferences] {
        assert!(repo.fetch_document(kind, missing).await.unwrap().is_none());
        let data = json!({"a": 1}).as_object().unwrap().clone();
        assert!(
            repo.replace_document(kind, missing, &data)
                .await
                .unwrap()
                .is_none()
        );
    }
    assert!(repo.pending_invalidations(10).await.unwrap().is_empty());

    let id = UserId::random();
    repo.create(id, &NewProfile::default()).await.unwrap();
    let empty = repo
        .fetch_document(DocumentKind::Settings, id)
        .await
        .unwrap()
        .unwrap();
    assert!(empty.data.is_empty());
    assert_eq!(empty.updated_at, None);

    let first = json!({
        "theme": "dark",
        "notifications": {"email": true, "push": false},
        "langs": ["ja", "en"],
        "n": 42,
        "ratio": 0.5,
        "nothing": null
    });
    let first = first.as_object().unwrap().clone();
    let w = repo
        .replace_document(DocumentKind::Settings, id, &first)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w.value.data, first);
    assert!(w.value.updated_at.is_some());
    let read = repo
        .fetch_document(DocumentKind::Settings, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, w.value);

    // Replace, not merge.
    let second = json!({"theme": "light"}).as_object().unwrap().clone();
    let w2 = repo
        .replace_document(DocumentKind::Settings, id, &second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(w2.value.data, second);
    assert!(w2.value.updated_at > w.value.updated_at);
    assert_eq!(
        repo.fetch_document(DocumentKind::Settings, id)
            .await
            .unwrap()
            .unwrap(),
        w2.value
    );

    // The two documents are independent, and writing one leaves the profile alone.
    let prefs = repo
        .fetch_document(DocumentKind::Preferences, id)
        .await
        .unwrap()
        .unwrap();
    assert!(prefs.data.is_empty());
    let profile = repo.fetch(id).await.unwrap().unwrap();
    assert_eq!(profile.created_at, profile.updated_at);

    // An empty object can be stored too.
    let w3 = repo
        .replace_document(DocumentKind::Preferences, id, &JsonObject::new())
        .await
        .unwrap()
        .unwrap();
    assert!(w3.value.data.is_empty() && w3.value.updated_at.is_some());

    let scopes: Vec<&str> = pending_scopes(&repo)
        .await
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(scopes, ["profile", "settings", "settings", "preferences"]);
}

#[rstest]
#[tokio::test]
async fn record_login_is_throttled(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let repo = migrated(backend).await;
    let id = UserId::random();
    let p = repo.create(id, &NewProfile::default()).await.unwrap().value;
    let t0 = Utc::now().trunc_subsecs(0) - TimeDelta::hours(5);

    let w = repo
        .record_login(id, t0)
        .await
        .unwrap()
        .expect("first login recorded");
    assert!(w.outbox_id > 0);
    let after = repo.fetch(id).await.unwrap().unwrap();
    assert_eq!(after.last_login, Some(t0));
    assert_eq!(after.updated_at, p.updated_at, "updated_at untouched");
    let outbox_len = repo.pending_invalidations(100).await.unwrap().len();

    // Within the hour: nothing written, no outbox row.
    for at in [
        t0,
        t0 + TimeDelta::minutes(30),
        t0 + TimeDelta::minutes(59),
        t0 - TimeDelta::hours(3),
    ] {
        assert!(repo.record_login(id, at).await.unwrap().is_none(), "{at}");
    }
    assert_eq!(
        repo.pending_invalidations(100).await.unwrap().len(),
        outbox_len
    );
    assert_eq!(repo.fetch(id).await.unwrap().unwrap().last_login, Some(t0));

    // More than an hour later: written.
    let t1 = t0 + TimeDelta::minutes(61);
    assert!(repo.record_login(id, t1).await.unwrap().is_some());
    let after = repo.fetch(id).await.unwrap().unwrap();
    assert_eq!(after.last_login, Some(t1));
    assert_eq!(after.updated_at, p.updated_at);
    let pending = repo.pending_invalidations(100).await.unwrap();
    assert_eq!(pending.len(), outbox_len + 1);
    assert_eq!(pending.last().unwrap().scope, InvalidationScope::Profile);

    assert!(
        repo.record_login(UserId::random(), t1)
            .await
            .unwrap()
            .is_none()
    );
}

#[rstest]
#[tokio::test]
async fn recent_logins_order_and_limit(
    #[values(Backend::Postgres, Backend::Sqlite)] backend: Backend,
) {
    let repo = migrated(backend).await;
    let now = Utc::now();
    let mut expected = Vec::new();
    for hours_ago in [30, 2, 100, 50] {
        let id = UserId::random();
        repo.create(id, &NewProfile::default()).await.unwrap();
        repo.record_login(id, now - TimeDelta::hours(hours_ago))
            .await
            .unwrap()
            .unwrap();
        expected.push((hours_ago, id));
    }
    // Too old, and never logged in.
    let old = UserId::random();
    repo.create(old, &NewProfile::default()).await.unwrap();
    repo.record_login(old, now - TimeDelta::days(8))
        .await
        .unwrap()
        .unwrap();
    repo.create(UserId::random(), &NewProfile::default())
        .await
        .unwrap();

    expected.sort();
    let expected: Vec<UserId> = expected.into_iter().map(|(_, id)| id).collect();
    let since = now - TimeDelta::days(7);
    let got: Vec<UserId> = repo
        .recent_logins(since, 1000)
        .await
        .unwrap()
        .iter()
        .map(|p| p.user_id)
        .collect();
    assert_eq!(got, expected);
    let two: Vec<UserId> = repo
        .recent_logins(since, 2)
        .await
        .unwrap()
        .iter()
        .map(|p| p.user_id)
        .collect();
    assert_eq!(two, expected[..2]);
    assert!(repo.recent_logins(now, 10).await.unwrap().is_empty());
    // Sub-second boundaries compare as times, not as text of varying width.
    let at = now.trunc_subsecs(0) - TimeDelta::hours(200);
    let edge = UserId::random();
    repo.create(edge, &NewProfile::default()).await.unwrap();
    repo.record_login(edge, at).await.unwrap().unwrap();
    let just_before = at - TimeDelta::microseconds(1);
    let hit = repo.recent_logins(just_before, 1000).await.unwrap();
    assert!(hit.iter().any(|p| p.user_id == edge));
    let miss = repo.recent_logins(at, 1000).await.unwrap();
    assert!(!miss.iter().any(|p| p.user_id == edge));
}

#[rstest]
#[tokio::test]
async fn fetch_many_one_query(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let repo = migrated(backend).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = UserId::random();
        repo.create(id, &full_profile(&format!("m{i}@example.com")))
            .await
            .unwrap();
        ids.push(id);
    }
    let missing = UserId::random();
    let asked = vec![ids[0], missing, ids[1], ids[2], ids[0]];
    let got = repo.fetch_many(&asked).await.unwrap();
    let got_ids: HashSet<UserId> = got.iter().map(|p| p.user_id).collect();
    assert_eq!(got.len(), 3);
    assert_eq!(got_ids, ids.iter().copied().collect());
    for p in &got {
        assert_eq!(Some(p.clone()), repo.fetch(p.user_id).await.unwrap());
    }
    assert!(repo.fetch_many(&[]).await.unwrap().is_empty());
    assert!(repo.fetch_many(&[missing]).await.unwrap().is_empty());

    // A full batch of 100 ids.
    let mut many: Vec<UserId> = (0..97).map(|_| UserId::random()).collect();
    many.extend(&ids);
    assert_eq!(repo.fetch_many(&many).await.unwrap().len(), 3);
}

#[rstest]
#[tokio::test]
async fn outbox_rows_per_write(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let repo = migrated(backend).await;
    let id = UserId::random();
    let mut ids = Vec::new();
    ids.push(
        repo.create(id, &NewProfile::default())
            .await
            .unwrap()
            .outbox_id,
    );
    ids.push(
        repo.update(id, &ProfilePatch::default())
            .await
            .unwrap()
            .unwrap()
            .outbox_id,
    );
    ids.push(
        repo.upsert(id, &ProfilePatch::default())
            .await
            .unwrap()
            .outbox_id,
    );
    let doc = JsonObject::new();
    ids.push(
        repo.replace_document(DocumentKind::Settings, id, &doc)
            .await
            .unwrap()
            .unwrap()
            .outbox_id,
    );
    ids.push(
        repo.replace_document(DocumentKind::Preferences, id, &doc)
            .await
            .unwrap()
            .unwrap()
            .outbox_id,
    );
    ids.push(
        repo.record_login(id, Utc::now())
            .await
            .unwrap()
            .unwrap()
            .outbox_id,
    );
    ids.push(repo.delete(id).await.unwrap().unwrap().outbox_id);
    // Failed or no-op writes record nothing.
    assert!(repo.create(id, &NewProfile::default()).await.is_ok());
    ids.push(
        repo.pending_invalidations(100)
            .await
            .unwrap()
            .last()
            .unwrap()
            .id,
    );
    assert!(repo.create(id, &NewProfile::default()).await.is_err());
    assert!(
        repo.update(UserId::random(), &ProfilePatch::default())
            .await
            .unwrap()
            .is_none()
    );
    assert!(repo.delete(UserId::random()).await.unwrap().is_none());

    let pending = repo.pending_invalidations(100).await.unwrap();
    assert_eq!(
        pending.iter().map(|p| p.id).collect::<Vec<_>>(),
        ids,
        "oldest first"
    );
    let scopes: Vec<&str> = pending.iter().map(|p| p.scope.as_str()).collect();
    assert_eq!(
        scopes,
        [
            "profile",
            "profile",
            "profile",
            "settings",
            "preferences",
            "profile",
            "all",
            "profile"
        ]
    );
    assert!(pending.iter().all(|p| p.user_id == id));
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    // Limit, then clearing some and then the rest.
    assert_eq!(repo.pending_invalidations(3).await.unwrap().len(), 3);
    repo.clear_invalidations(&ids[..3]).await.unwrap();
    let rest: Vec<i64> = repo
        .pending_invalidations(100)
        .await
        .unwrap()
        .iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(rest, ids[3..]);
    repo.clear_invalidations(&[]).await.unwrap();
    repo.clear_invalidations(&rest).await.unwrap();
    repo.clear_invalidations(&rest).await.unwrap(); // already gone: fine
    assert!(repo.pending_invalidations(100).await.unwrap().is_empty());
}

/// What seeding writes. How fast it is, is a timing, not a check: the ignored
/// `seed_100k_*_timing` tests and `user-api seed` (which prints it) measure it.
#[rstest]
#[tokio::test]
async fn seed_inserts_plausible_rows(
    #[values(Backend::Postgres, Backend::Sqlite)] backend: Backend,
) {
    let repo = migrated(backend).await;
    let n = user_api::seed::seed(repo.as_ref(), 2_000).await.unwrap();
    assert_eq!(n, 2_000);
    let recent = repo
        .recent_logins(Utc::now() - TimeDelta::days(7), 10_000)
        .await
        .unwrap();
    assert!(
        (450..900).contains(&recent.len()),
        "{} recent",
        recent.len()
    );
    // Seeded rows read back like any other.
    let sample: Vec<UserId> = recent.iter().take(50).map(|p| p.user_id).collect();
    let again = repo.fetch_many(&sample).await.unwrap();
    assert_eq!(again.len(), sample.len());
    for p in again {
        assert!(recent.contains(&p));
    }
}

#[rstest]
#[tokio::test]
async fn insert_many_skips_existing(
    #[values(Backend::Postgres, Backend::Sqlite)] backend: Backend,
) {
    let repo = migrated(backend).await;
    let profiles = user_api::seed::fake_profiles(300);
    assert_eq!(repo.insert_many(&profiles).await.unwrap(), 300);
    assert_eq!(repo.insert_many(&profiles).await.unwrap(), 0);
    assert_eq!(repo.insert_many(&[]).await.unwrap(), 0);
    // Stored exactly (timestamps are generated at microsecond precision).
    let p = &profiles[17];
    assert_eq!(repo.fetch(p.user_id).await.unwrap().as_ref(), Some(p));
    // Seeding does not queue invalidations: nothing was cached for new ids.
    assert!(repo.pending_invalidations(10).await.unwrap().is_empty());
}

#[rstest]
#[tokio::test]
async fn text_round_trips_verbatim(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let repo = migrated(backend).await;
    let nasty = [
        "'; DROP TABLE profiles; --",
        "Robert'); DELETE FROM settings WHERE ('1'='1",
        "\"double\" and 'single' quotes, `backticks`",
        "back\\slash \\x00 \\u0000 $1 ?1 ? %s %",
        "emoji 😀👍🏽🇯🇵 and ZWJ 👨‍👩‍👧",
        "漢字 かな カナ ｈａｌｆ－ｗｉｄｔｈ",
        "line\nbreak\ttab\r\n",
        "  leading and trailing spaces  ",
        "ünïcödé Ω ≠ ∞",
    ];
    for (i, text) in nasty.iter().enumerate() {
        let id = UserId::random();
        let new = NewProfile {
            first_name: Some((*text).to_owned()),
            last_name: Some(text.chars().rev().collect()),
            name: Some(format!("{text}{text}")),
            email: Some(email(&format!("o'brien+{i}@example.com"))),
            phone: Some((*text).to_owned()),
            address: Some(text.repeat(3)),
            ..NewProfile::default()
        };
        let p = repo.create(id, &new).await.unwrap().value;
        assert_eq!(p.first_name.as_deref(), Some(*text));
        assert_eq!(p.phone.as_deref(), Some(*text));
        assert_eq!(p.address, Some(text.repeat(3)));
        assert_eq!(repo.fetch(id).await.unwrap(), Some(p));

        let patch = ProfilePatch {
            name: FieldChange::Set((*text).to_owned()),
            ..Default::default()
        };
        let u = repo.update(id, &patch).await.unwrap().unwrap().value;
        assert_eq!(u.name.as_deref(), Some(*text));

        let mut doc = JsonObject::new();
        doc.insert((*text).to_owned(), json!(text));
        doc.insert("nested".into(), json!({"list": [text, 1, null]}));
        let w = repo
            .replace_document(DocumentKind::Preferences, id, &doc)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(w.value.data, doc);
        let read = repo
            .fetch_document(DocumentKind::Preferences, id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.data, doc);
    }
    // Non-ASCII e-mail addresses survive too.
    let id = UserId::random();
    let p = repo
        .create(id, &full_profile("太郎@例え.jp"))
        .await
        .unwrap()
        .value;
    assert_eq!(p.email.as_ref().map(Email::as_str), Some("太郎@例え.jp"));
    assert_eq!(repo.fetch(id).await.unwrap(), Some(p));
    // The tables are still there.
    assert_eq!(repo.fetch_many(&[id]).await.unwrap().len(), 1);
}

#[rstest]
#[tokio::test]
async fn pool_stats_are_sane(#[values(Backend::Postgres, Backend::Sqlite)] backend: Backend) {
    let repo = migrated(backend).await;
    repo.ping().await.unwrap();
    let s = repo.pool_stats();
    assert_eq!(s.max, 5);
    assert!(s.size >= 1 && s.size <= s.max, "{s:?}");
    assert!(s.idle <= s.size, "{s:?}");
}

#[tokio::test]
async fn postgres_down_is_unavailable_quickly() {
    let opts = PoolOptions {
        acquire_timeout: Duration::from_secs(1),
        ..opts()
    };
    let started = Instant::now();
    let err = PostgresRepo::connect("postgres://postgres@127.0.0.1:1/postgres", &opts)
        .await
        .unwrap_err();
    assert!(matches!(err, DbError::Unavailable(_)), "{err:?}");
    // Ten times the acquire timeout: a refused connection is reported within it, and
    // only a connect that hangs (no timeout at all) could pass the bound.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn postgres_recovers_after_connections_are_killed() {
    let url = db::fresh_postgres_url().await;
    let repo = PostgresRepo::connect(&url, &opts()).await.unwrap();
    repo.migrate().await.unwrap();
    repo.ping().await.unwrap();
    let db_name = url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    // What a server restart does to every pooled connection.
    let admin = sqlx::PgPool::connect(&db::pg_admin_url()).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&db_name)
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    // The pool notices the dead connections and replaces them.
    repo.ping().await.unwrap();
    assert!(repo.fetch(UserId::random()).await.unwrap().is_none());
}

#[tokio::test]
async fn sqlite_creates_directory_and_file_and_accepts_both_url_forms() {
    let base = std::env::temp_dir().join(format!("user-api-test-dirs-{}", uuid::Uuid::new_v4()));
    let file = base.join("nested").join("data").join("user-api.db");
    assert!(!file.exists());
    let repo = SqliteRepo::connect(&format!("sqlite://{}", file.display()), &opts())
        .await
        .unwrap();
    repo.migrate().await.unwrap();
    repo.create(UserId::random(), &NewProfile::default())
        .await
        .unwrap();
    assert!(file.exists());
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(
            &sqlx::SqlitePool::connect(&format!("sqlite:{}", file.display()))
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(mode.to_lowercase(), "wal");

    // The `sqlite:path` spelling opens the same file; migrating again is a no-op.
    let again = SqliteRepo::connect(&format!("sqlite:{}", file.display()), &opts())
        .await
        .unwrap();
    again.migrate().await.unwrap();
    assert_eq!(
        again
            .recent_logins(DateTime::<Utc>::MIN_UTC, 10)
            .await
            .unwrap()
            .len(),
        0
    );
    let ids: Vec<UserId> = again
        .pending_invalidations(10)
        .await
        .unwrap()
        .iter()
        .map(|p| p.user_id)
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(again.fetch_many(&ids).await.unwrap().len(), 1);

    // Relative paths, as in the default `sqlite://data/user-api.db`, resolve against the
    // working directory; check the directory creation with one under the temp dir.
    let rel_dir = base.join("rel");
    std::fs::create_dir_all(&rel_dir).unwrap();
    let rel = SqliteRepo::connect(&format!("sqlite://{}/sub/x.db", rel_dir.display()), &opts())
        .await
        .unwrap();
    rel.migrate().await.unwrap();
    assert!(rel_dir.join("sub").join("x.db").exists());
    std::fs::remove_dir_all(&base).ok();
}

#[tokio::test]
async fn sqlite_stores_readable_text() {
    let url = db::fresh_sqlite_url();
    let repo = SqliteRepo::connect(&url, &opts()).await.unwrap();
    repo.migrate().await.unwrap();
    let id = UserId::random();
    repo.create(id, &full_profile("t@example.com"))
        .await
        .unwrap();
    repo.record_login(id, Utc::now()).await.unwrap().unwrap();
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let (uid, dob, login, created): (String, String, String, String) =
        sqlx::query_as("SELECT user_id, date_of_birth, last_login, created_at FROM profiles")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(uid, id.to_string());
    assert_eq!(dob, "1990-01-01");
    for t in [&login, &created] {
        assert_eq!(t.len(), "2025-01-01T00:00:00.000000Z".len(), "{t}");
        assert!(t.ends_with('Z'));
    }
}

/// Run manually: `cargo nextest run --run-ignored only repo::seed_100k --no-capture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn seed_100k_postgres_timing() {
    let repo = migrated(Backend::Postgres).await;
    let started = Instant::now();
    let n = user_api::seed::seed(repo.as_ref(), 100_000).await.unwrap();
    let took = started.elapsed();
    println!("postgres: seeded {n} profiles in {took:?}");
    assert_eq!(n, 100_000);
    assert!(took < Duration::from_secs(60));
}

/// Run manually: `cargo nextest run --run-ignored only repo::seed_100k --no-capture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn seed_100k_sqlite_timing() {
    let repo = migrated(Backend::Sqlite).await;
    let started = Instant::now();
    let n = user_api::seed::seed(repo.as_ref(), 100_000).await.unwrap();
    println!("sqlite: seeded {n} profiles in {:?}", started.elapsed());
    assert_eq!(n, 100_000);
}

/// The migrations give every field of the list its column, of the type the list declares:
/// a field added without its migration, or with another type, fails here.
#[rstest]
#[tokio::test]
async fn every_listed_field_has_its_column(
    #[values(Backend::Postgres, Backend::Sqlite)] backend: Backend,
) {
    use sqlx::Connection;
    let url = match backend {
        Backend::Postgres => db::fresh_postgres_url().await,
        Backend::Sqlite => db::fresh_sqlite_url(),
    };
    let repo = user_api::db::connect(&url, &opts()).await.expect("connect");
    repo.migrate().await.expect("migrate");
    for f in user_api::domain::FIELDS {
        let (found, expected) = match backend {
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                // Both as PostgreSQL spells them (`varchar` is `character varying`).
                let (found, expected): (Option<String>, String) = sqlx::query_as(
                    "SELECT (SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
                     WHERE attrelid = 'profiles'::regclass AND attname = $1 \
                     AND NOT attisdropped), $2::text::regtype::text",
                )
                .bind(f.name)
                .bind(f.postgres)
                .fetch_one(&mut c)
                .await
                .unwrap();
                (found, expected)
            }
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
                let found: Option<String> = sqlx::query_scalar(
                    "SELECT type FROM pragma_table_info('profiles') WHERE name = $1",
                )
                .bind(f.name)
                .fetch_optional(&mut c)
                .await
                .unwrap();
                (found.map(|t| t.to_uppercase()), f.sqlite.to_uppercase())
            }
        };
        assert_eq!(found, Some(expected), "column of {}", f.name);
    }
}
