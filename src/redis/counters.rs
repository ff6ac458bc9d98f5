//! Rate-limit counters in Redis: one atomic step per count, no script.
//!
//! `MULTI; INCR key; PEXPIRE key <ttl> NX; EXEC`. The transaction runs as one step, so
//! no other command sees the counter between its increment and its expiry; `NX` gives an
//! expiry only to a counter that has none (the first of the window, or one an operator
//! stripped with `PERSIST`) and never moves an existing one. The TTL is relative (the
//! rest of the window plus a margin), so it is always in the future, whatever the
//! instance's clock says: a counter without a TTL cannot exist after `EXEC`, and a client
//! that dies before `EXEC` sent nothing that runs. Redis 7 freezes the clock for the whole
//! transaction, so the key cannot expire between the two commands either.
//!
//! This costs Redis about a third of the former Lua script (no script lookup, no Lua
//! VM) and works the same on a cluster (one key, one slot).

use async_trait::async_trait;
use redis::{Pipeline, Value, pipe};

use super::{RedisClient, StoreError};
use crate::ratelimit::CounterStore;

/// The counter store over the shared Redis client.
#[derive(Clone)]
pub struct RedisCounters {
    client: RedisClient,
}

impl RedisCounters {
    /// Uses `client` (the app's one Redis client, shared with the cache).
    pub fn new(client: RedisClient) -> Self {
        Self { client }
    }
}

/// Appends the atomic count of `key` (expiring `ttl_ms` from now when it has no expiry)
/// to `p`: four replies, the count being the first element of the fourth (`EXEC`).
pub(crate) fn push_count(p: &mut Pipeline, key: &str, ttl_ms: u64) {
    p.cmd("MULTI")
        .cmd("INCR")
        .arg(key)
        .cmd("PEXPIRE")
        .arg(key)
        .arg(ttl_ms.max(1))
        .arg("NX")
        .cmd("EXEC");
}

/// Replies taken by [`push_count`].
pub(crate) const COUNT_REPLIES: usize = 4;

/// The count out of the `EXEC` reply of [`push_count`].
pub(crate) fn read_count(exec: &Value) -> Option<u64> {
    match exec {
        Value::Array(items) => match items.first()? {
            Value::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// A reply that is not what a command of ours answers.
pub(crate) fn unexpected(what: &'static str) -> StoreError {
    StoreError::Redis {
        message: format!("unexpected reply to {what}"),
        unreachable: false,
    }
}

#[async_trait]
impl CounterStore for RedisCounters {
    fn name(&self) -> &'static str {
        if self.client.is_cluster() {
            "redis-cluster"
        } else {
            "redis"
        }
    }

    async fn hit(&self, key: &str, ttl_ms: u64) -> Result<u64, StoreError> {
        let mut p = pipe();
        push_count(&mut p, key, ttl_ms);
        let replies: Vec<Value> = self.client.query_pipeline(&p).await?;
        replies
            .get(COUNT_REPLIES - 1)
            .and_then(read_count)
            .ok_or_else(|| unexpected("a counter transaction"))
    }
}
