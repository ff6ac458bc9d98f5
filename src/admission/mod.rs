//! Admission: the one step that decides, after the signature check, everything a request
//! needs from the shared store, in one round trip (ARCHITECTURE "The hot path"):
//!
//! - revocation (SPEC 7): `blacklist:<jti>` (or `blacklist:<first 50 chars>`) and
//!   `blacklist:user:<sub>`;
//! - the rate-limit count of the route's policy (SPEC 5);
//! - for a read, a look at the cache entry and its companion state (SPEC 4), which the read
//!   use case then serves from or fills after.
//!
//! On a single Redis node that is one pipeline; on a cluster the keys live in different
//! slots, so the parts go to their nodes concurrently, never one after the other
//! ([`redis_round_trip`]). Callers see domain types only. With the embedded store the
//! same operation runs in process ([`Admission::admit`]), with no revocation source.
//!
//! When the store cannot be asked, each part falls back on its own: the count to the
//! limiter's in-process counters (or a refusal with `fail = "closed"`), the look to none
//! (the read goes to the database), and revocation to what this instance has already seen
//! ([`revocations`]: each token seen revoked, until its `exp`) and then to `auth.revocation_unavailable` (`allow` counts the
//! request in `auth_revocation_unchecked_total`; `deny` refuses it).
//!
//! Reference: `docs/admission.md`.

mod redis_round_trip;
pub mod revocations;

use std::sync::Arc;
use std::time::Instant;

use crate::auth::Caller;
use crate::cache::{Cache, Kind, Look};
use crate::domain::UserId;
use crate::ratelimit::{Decision, LimitError, Limiter, Policy};
use crate::redis::RedisClient;
use redis_round_trip::RoundTrip;
use revocations::Revocations;

// The setting's type lives with the configuration, which depends on no other module.
pub use crate::config::RevocationUnavailable;

/// One request to admit.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The verified caller.
    pub caller: &'a Caller,
    /// The route's rate-limit policy.
    pub policy: Policy,
    /// The `<endpoint>` part of its counter key.
    pub endpoint: &'a str,
    /// For a read the caller may make: the entry it will read.
    pub look: Option<(Kind, UserId)>,
}

/// An admitted request: its rate-limit verdict (for the headers) and the look at its
/// entry, when one was asked for and the store answered.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The rate-limit verdict (allowed).
    pub decision: Decision,
    /// The look at the entry the read will serve.
    pub look: Option<Look>,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The token or its user is revoked.
    Revoked,
    /// Over its rate limit.
    Limited(Decision),
    /// The limiter's store is unreachable and `fail = "closed"`.
    LimiterUnavailable,
    /// Revocation could not be checked and `auth.revocation_unavailable = "deny"`.
    RevocationUnavailable,
}

/// What the store said about revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RevocationAnswer {
    /// Whether `blacklist:<token>` or `blacklist:user:<sub>` exists.
    Checked { revoked: bool },
    /// The store could not be asked.
    Unreachable,
    /// No revocation source (the embedded store).
    NoSource,
}

/// The admission step shared by every request of an instance.
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

struct Inner {
    round_trip: Option<RoundTrip>,
    limiter: Limiter,
    cache: Cache,
    revocations: Revocations,
    on_unavailable: RevocationUnavailable,
}

impl Admission {
    /// Admission over `redis` (or in process without it), with the instance's limiter and
    /// cache. Says at start when there is no revocation source.
    pub fn new(
        redis: Option<RedisClient>,
        limiter: Limiter,
        cache: Cache,
        on_unavailable: RevocationUnavailable,
    ) -> Self {
        if redis.is_none() {
            tracing::warn!(
                "no Redis configured: revoked tokens (the auth service's blacklist:* keys) \
                 are not checked; tokens are valid until they expire"
            );
        }
        Self {
            inner: Arc::new(Inner {
                round_trip: redis.map(RoundTrip::new),
                limiter,
                cache,
                revocations: Revocations::new(),
                on_unavailable,
            }),
        }
    }

    /// Decides `ask`: revocation, then the rate limit; the look rides along.
    pub async fn admit(&self, ask: Ask<'_>) -> Result<Admitted, Refusal> {
        let inner = &self.inner;
        let counter = inner.limiter.counter_for(ask.caller.user_id, ask.endpoint);
        let look_keys = ask
            .look
            .filter(|_| inner.cache.may_read())
            .map(|(kind, id)| kind.keys(id));
        let (revocation, count, observed) = match &inner.round_trip {
            Some(rt) => {
                let reply = rt.ask(ask.caller, &counter, look_keys.as_ref()).await;
                let revocation = match reply.revoked {
                    Ok(revoked) => RevocationAnswer::Checked { revoked },
                    Err(_) => RevocationAnswer::Unreachable,
                };
                let count = match reply.count {
                    Ok(n) => Ok(inner.limiter.counted(&counter, n)),
                    Err(e) => inner.limiter.count_without_store(&counter, &e),
                };
                (revocation, count, reply.observed.ok().flatten())
            }
            None => {
                let count = inner
                    .limiter
                    .check_local(&counter)
                    .map_err(|_| LimitError::Unavailable);
                let observed = match &look_keys {
                    Some(keys) => inner.cache.observe_keys(keys).await.ok(),
                    None => None,
                };
                (RevocationAnswer::NoSource, count, observed)
            }
        };
        self.judge_revocation(ask.caller, revocation)?;
        let decision = match count {
            Ok(c) => inner.limiter.decide(ask.policy, c),
            Err(LimitError::Unavailable) => return Err(Refusal::LimiterUnavailable),
        };
        if !decision.allowed() {
            return Err(Refusal::Limited(decision));
        }
        Ok(Admitted {
            decision,
            look: observed.map(|observed| Look {
                observed,
                at: Instant::now(),
            }),
        })
    }

    fn judge_revocation(&self, caller: &Caller, answer: RevocationAnswer) -> Result<(), Refusal> {
        let inner = &self.inner;
        match answer {
            RevocationAnswer::Checked { revoked } => {
                inner.revocations.record(caller, revoked);
                if revoked {
                    metrics::counter!("auth_revoked_total").increment(1);
                    return Err(Refusal::Revoked);
                }
                Ok(())
            }
            RevocationAnswer::NoSource => Ok(()),
            RevocationAnswer::Unreachable => {
                if inner.revocations.is_revoked(caller) {
                    metrics::counter!("auth_revoked_total").increment(1);
                    return Err(Refusal::Revoked);
                }
                metrics::counter!("auth_revocation_unchecked_total").increment(1);
                match inner.on_unavailable {
                    RevocationUnavailable::Allow => Ok(()),
                    RevocationUnavailable::Deny => Err(Refusal::RevocationUnavailable),
                }
            }
        }
    }
}
