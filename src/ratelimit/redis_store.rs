//! Counters in Redis: one Lua script per limited request.
//!
//! The script increments the window's key and, in the same atomic step, gives it an
//! absolute expiry (the window's end plus a margin) whenever it has none, so no counter
//! can outlive its window even if a process dies between two commands: there is no
//! "between". It answers the count and the key's remaining milliseconds, from which every
//! header is computed.
//!
//! A caller may hand in one more command to send with the count (the read path sends its
//! cache look this way): in one pipeline on a single node (one round trip), concurrently
//! on a cluster, where the keys live in different slots and cannot share a pipeline.

use std::sync::LazyLock;

use redis::Script;

use super::Count;
use super::window::{EXPIRY_MARGIN_MS, Window, now_ms};
use crate::redis::{RedisClient, StoreError};

/// KEYS[1] the counter; ARGV[1] its expiry, Unix ms. Returns `{count, pttl}`.
const LUA: &str = r"
local count = redis.call('INCR', KEYS[1])
local pttl = redis.call('PTTL', KEYS[1])
if count == 1 or pttl == -1 then
  redis.call('PEXPIREAT', KEYS[1], ARGV[1])
  pttl = redis.call('PTTL', KEYS[1])
end
return {count, pttl}
";

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LUA));

/// The counter store over the shared Redis client.
#[derive(Clone)]
pub struct RedisCounters {
    client: RedisClient,
}

impl RedisCounters {
    /// Uses `client` (the app's one Redis client, shared with the cache).
    pub fn new(client: RedisClient) -> Self {
        client.register_script(&SCRIPT);
        Self { client }
    }

    /// The client, for availability checks.
    pub fn client(&self) -> &RedisClient {
        &self.client
    }

    /// Counts one request against `key`.
    pub async fn hit(&self, key: &str, window: &Window) -> Result<Count, StoreError> {
        let reply: (i64, i64) = self
            .client
            .run_script(
                &SCRIPT,
                &[key.to_owned()],
                &[window.expire_at_ms().to_string()],
            )
            .await?;
        Ok(to_count(reply, window))
    }

    /// Counts one request against `key` and runs `extra` in the same round trip. The
    /// reply is `None` when `extra` alone failed.
    pub async fn hit_with(
        &self,
        key: &str,
        window: &Window,
        extra: &redis::Cmd,
    ) -> Result<(Count, Option<redis::Value>), StoreError> {
        let keys = [key.to_owned()];
        let args = [window.expire_at_ms().to_string()];
        if self.client.is_cluster() {
            // The counter and `extra`'s keys live in different slots: concurrently.
            let (counted, value) = tokio::join!(
                self.client.run_script::<(i64, i64)>(&SCRIPT, &keys, &args),
                self.client.query::<redis::Value>(extra),
            );
            // A failed `extra` only costs its reply; a failed count is the store failing.
            return Ok((to_count(counted?, window), value.ok()));
        }
        let mut pipe = redis::pipe();
        self.client.add_script(&mut pipe, &SCRIPT, &keys, &args);
        pipe.add_command(extra.clone());
        let (counted, value): ((i64, i64), redis::Value) =
            self.client.query_pipeline(&pipe).await?;
        Ok((to_count(counted, window), Some(value)))
    }
}

/// Turns the script's `{count, pttl}` into a count and the time left in the window.
fn to_count((count, pttl): (i64, i64), window: &Window) -> Count {
    let margin = EXPIRY_MARGIN_MS as i64;
    // Redis' clock decides when the key dies, so the reset is read from its TTL; a key
    // that is already gone (an instance clock far ahead of Redis') falls back to ours.
    let reset_ms = if pttl > margin {
        ((pttl - margin) as u64).min(window.secs * 1000)
    } else {
        window.remaining_ms(now_ms())
    };
    Count {
        count: count.max(0) as u64,
        reset_ms,
    }
}
