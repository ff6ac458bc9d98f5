//! The admission round trip on Redis: the only place that knows which commands it takes.
//!
//! Single node, one pipeline:
//! `EXISTS blacklist:<token> blacklist:user:<sub>` (either one refuses the token),
//! `MULTI; INCR rate:…; PEXPIRE rate:… <ttl> NX; EXEC` (see `crate::redis::counters`), and
//! for a read `MGET <entry> <state> <missing>`.
//! Cluster: the same parts, each sent to its slot's node, all at once (the two revocation
//! keys as two `EXISTS`, since they live in different slots).

use redis::{Cmd, Pipeline, Value, cmd, pipe};

use crate::auth::Caller;
use crate::cache::{EntryKeys, Observed};
use crate::ratelimit::CounterKey;
use crate::redis::cache_store::mget;
use crate::redis::counters::{COUNT_REPLIES, push_count, read_count, unexpected};
use crate::redis::{RedisClient, StoreError};

/// The admission round trip over the shared Redis client.
pub(super) struct RoundTrip {
    client: RedisClient,
}

/// What the store answered, part by part (on a cluster each part may fail on its own).
pub(super) struct Reply {
    /// Whether the token or its user is revoked.
    pub revoked: Result<bool, StoreError>,
    /// The counter after this request.
    pub count: Result<u64, StoreError>,
    /// The look at the entry, when one was asked for.
    pub observed: Result<Option<Observed>, StoreError>,
}

fn token_key(caller: &Caller) -> String {
    format!("blacklist:{}", caller.token_id)
}

fn user_key(caller: &Caller) -> String {
    format!("blacklist:user:{}", caller.user_id)
}

fn exists(keys: &[&str]) -> Cmd {
    let mut c = cmd("EXISTS");
    for k in keys {
        c.arg(*k);
    }
    c
}

fn as_flag(v: &Value) -> Result<bool, StoreError> {
    match v {
        Value::Int(n) => Ok(*n > 0),
        _ => Err(unexpected("EXISTS")),
    }
}

fn as_observed(v: Value) -> Result<Observed, StoreError> {
    let values: Vec<Option<String>> = redis::from_redis_value(v).map_err(|_| unexpected("MGET"))?;
    Observed::from_values(values).ok_or_else(|| unexpected("MGET"))
}

impl RoundTrip {
    pub(super) fn new(client: RedisClient) -> Self {
        Self { client }
    }

    /// Asks everything in one round trip (one pipeline, or one concurrent fan-out).
    pub(super) async fn ask(
        &self,
        caller: &Caller,
        counter: &CounterKey,
        look: Option<&EntryKeys>,
    ) -> Reply {
        if self.client.is_cluster() {
            return self.fan_out(caller, counter, look).await;
        }
        let mut p = pipe();
        p.add_command(exists(&[&token_key(caller), &user_key(caller)]));
        push_count(&mut p, &counter.key, counter.ttl_ms);
        if let Some(keys) = look {
            p.add_command(mget(keys));
        }
        match self.client.query_pipeline::<Vec<Value>>(&p).await {
            Ok(replies) => read_pipeline(replies, look.is_some()),
            Err(e) => Reply {
                revoked: Err(e.clone()),
                count: Err(e.clone()),
                observed: Err(e),
            },
        }
    }

    /// On a cluster: every part to its own node, concurrently.
    async fn fan_out(
        &self,
        caller: &Caller,
        counter: &CounterKey,
        look: Option<&EntryKeys>,
    ) -> Reply {
        let (tk, uk) = (exists(&[&token_key(caller)]), exists(&[&user_key(caller)]));
        let mut count_pipe = Pipeline::new();
        push_count(&mut count_pipe, &counter.key, counter.ttl_ms);
        let look_cmd = look.map(mget);
        let (token, user, count, observed) = tokio::join!(
            self.client.query::<Value>(&tk),
            self.client.query::<Value>(&uk),
            self.client.query_pipeline::<Vec<Value>>(&count_pipe),
            async {
                match &look_cmd {
                    Some(c) => self.client.query::<Value>(c).await.map(Some),
                    None => Ok(None),
                }
            },
        );
        let revoked = match (token, user) {
            (Ok(t), Ok(u)) => as_flag(&t).and_then(|t| Ok(t || as_flag(&u)?)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let count = count.and_then(|replies| {
            replies
                .get(COUNT_REPLIES - 1)
                .and_then(read_count)
                .ok_or_else(|| unexpected("a counter transaction"))
        });
        let observed = observed.and_then(|v| v.map(as_observed).transpose());
        Reply {
            revoked,
            count,
            observed,
        }
    }
}

/// Splits the single-node pipeline's replies into the parts.
fn read_pipeline(replies: Vec<Value>, with_look: bool) -> Reply {
    let expected = 1 + COUNT_REPLIES + usize::from(with_look);
    if replies.len() != expected {
        let e = unexpected("the admission pipeline");
        return Reply {
            revoked: Err(e.clone()),
            count: Err(e.clone()),
            observed: Err(e),
        };
    }
    let mut it = replies.into_iter();
    let revoked = it
        .next()
        .map_or_else(|| Err(unexpected("EXISTS")), |v| as_flag(&v));
    let exec = it.nth(COUNT_REPLIES - 1);
    let count = exec
        .as_ref()
        .and_then(read_count)
        .ok_or_else(|| unexpected("a counter transaction"));
    let observed = if with_look {
        it.next().map(as_observed).transpose()
    } else {
        Ok(None)
    };
    Reply {
        revoked,
        count,
        observed,
    }
}
