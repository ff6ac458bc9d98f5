//! The cache store on Redis or Redis Cluster, over [`RedisClient`].
//!
//! An entry and its companions share one hash slot, so each per-entry write is one
//! script. On a single node multi-entry work is one command or one pipeline (one round
//! trip); on a cluster it is grouped by slot and the groups are sent concurrently; no
//! command ever spans two slots.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use ::redis::{Cmd, Script, cmd, pipe};
use async_trait::async_trait;
use futures::future::try_join_all;

use ::redis::cluster_routing::Slot;

use super::{RedisClient, StoreError};
use crate::cache::{CacheStore, EntryKeys, Fill, FillContent, HITS_KEY, MISSES_KEY, Observed};

/// The guarded fill. KEYS: entry, state, missing. ARGV: the state the reader saw ("" for
/// none), "e" (entry) or "m" (tombstone), the entry, the TTL in ms. Stores only while the
/// state still holds what the reader saw: a write acknowledged since then has replaced it.
static FILL_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[2]) or ''
if cur ~= ARGV[1] then return 0 end
if ARGV[2] == 'm' then
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[4])
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  redis.call('DEL', KEYS[3])
end
return 1
",
    )
});

/// A write's invalidation. KEYS: entry, state, missing. ARGV: a fresh token, its TTL in ms.
static INVALIDATE_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[1], KEYS[3])
return 1
",
    )
});

/// Cache entries and shared counters in Redis.
pub struct RedisCacheStore {
    client: RedisClient,
}

impl RedisCacheStore {
    /// A store over `client`.
    pub fn new(client: RedisClient) -> Self {
        client.register_script(&FILL_SCRIPT);
        client.register_script(&INVALIDATE_SCRIPT);
        Self { client }
    }

    /// Indices of `keys` grouped by slot (a single group on a single node).
    fn groups<'k>(&self, keys: impl Iterator<Item = &'k str>) -> Vec<Vec<usize>> {
        if !self.client.is_cluster() {
            return vec![keys.enumerate().map(|(i, _)| i).collect()];
        }
        let mut by_slot: HashMap<Slot, Vec<usize>> = HashMap::new();
        for (i, k) in keys.enumerate() {
            by_slot.entry(Slot::for_key(k)).or_default().push(i);
        }
        by_slot.into_values().collect()
    }

    fn script_keys(keys: &EntryKeys) -> Vec<String> {
        keys.all().iter().map(|k| (*k).to_owned()).collect()
    }

    fn fill_args(fill: &Fill) -> Vec<String> {
        let (mode, value) = match &fill.content {
            FillContent::Entry(v) => ("e", v.clone()),
            FillContent::Missing => ("m", String::new()),
        };
        vec![
            fill.seen_state.clone().unwrap_or_default(),
            mode.to_owned(),
            value,
            millis(fill.ttl).to_string(),
        ]
    }

    /// Sends `per_entry` for every entry: one pipeline per slot group.
    async fn pipelined<T, F>(
        &self,
        entries: &[EntryKeys],
        mut per_entry: F,
    ) -> Result<Vec<T>, StoreError>
    where
        T: ::redis::FromRedisValue + Send,
        F: FnMut(&mut ::redis::Pipeline, usize),
    {
        let groups = self.groups(entries.iter().map(|k| k.entry.as_str()));
        let pipes: Vec<(Vec<usize>, ::redis::Pipeline)> = groups
            .into_iter()
            .map(|idx| {
                let mut p = pipe();
                for &i in &idx {
                    per_entry(&mut p, i);
                }
                (idx, p)
            })
            .collect();
        let answers = try_join_all(
            pipes
                .iter()
                .map(|(_, p)| async move { self.client.query_pipeline::<Vec<T>>(p).await }),
        )
        .await?;
        let mut out: Vec<Option<T>> = (0..entries.len()).map(|_| None).collect();
        for ((idx, _), values) in pipes.iter().zip(answers) {
            for (&i, v) in idx.iter().zip(values) {
                out[i] = Some(v);
            }
        }
        out.into_iter().map(|v| v.ok_or_else(short_reply)).collect()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn short_reply() -> StoreError {
    StoreError::Redis {
        message: "a pipeline answered fewer replies than commands".to_owned(),
        unreachable: false,
    }
}

/// `MGET` of an entry and its companions (read with [`Observed::from_values`]).
pub(crate) fn mget(keys: &EntryKeys) -> Cmd {
    let mut c = cmd("MGET");
    for k in keys.all() {
        c.arg(k);
    }
    c
}

#[async_trait]
impl CacheStore for RedisCacheStore {
    fn kind(&self) -> &'static str {
        if self.client.is_cluster() {
            "redis-cluster"
        } else {
            "redis"
        }
    }

    fn is_available(&self) -> bool {
        self.client.is_available()
    }

    fn is_healthy(&self) -> bool {
        !self.client.breaker_open()
    }

    fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client.query::<()>(&cmd("PING")).await
    }

    async fn eviction_policy(&self) -> Option<String> {
        self.client.eviction_policy().await
    }

    async fn observe(&self, keys: &EntryKeys) -> Result<Observed, StoreError> {
        let values: Vec<Option<String>> = self.client.query(&mget(keys)).await?;
        Observed::from_values(values).ok_or_else(short_reply)
    }

    async fn observe_many(&self, keys: &[EntryKeys]) -> Result<Vec<Observed>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let groups = self.groups(keys.iter().map(|k| k.entry.as_str()));
        let answers = try_join_all(groups.iter().map(|idx| {
            let mut c = cmd("MGET");
            for &i in idx {
                for k in keys[i].all() {
                    c.arg(k);
                }
            }
            async move { self.client.query::<Vec<Option<String>>>(&c).await }
        }))
        .await?;
        let mut out = vec![Observed::default(); keys.len()];
        for (idx, values) in groups.iter().zip(answers) {
            if values.len() != idx.len() * 3 {
                return Err(short_reply());
            }
            for (&i, three) in idx.iter().zip(values.chunks(3)) {
                out[i] = Observed::from_values(three.to_vec()).ok_or_else(short_reply)?;
            }
        }
        Ok(out)
    }

    async fn invalidate(&self, keys: &[EntryKeys], ttl: Duration) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let ttl = millis(ttl).to_string();
        self.pipelined::<i64, _>(keys, |p, i| {
            let token = uuid::Uuid::new_v4().simple().to_string();
            self.client.add_script(
                p,
                &INVALIDATE_SCRIPT,
                &Self::script_keys(&keys[i]),
                &[token, ttl.clone()],
            );
        })
        .await?;
        Ok(())
    }

    async fn fill(&self, fill: &Fill) -> Result<bool, StoreError> {
        let stored: i64 = self
            .client
            .run_script(
                &FILL_SCRIPT,
                &Self::script_keys(&fill.keys),
                &Self::fill_args(fill),
            )
            .await?;
        Ok(stored == 1)
    }

    async fn fill_many(&self, fills: &[Fill]) -> Result<Vec<bool>, StoreError> {
        if fills.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<EntryKeys> = fills.iter().map(|f| f.keys.clone()).collect();
        let stored = self
            .pipelined::<i64, _>(&keys, |p, i| {
                self.client.add_script(
                    p,
                    &FILL_SCRIPT,
                    &Self::script_keys(&fills[i].keys),
                    &Self::fill_args(&fills[i]),
                );
            })
            .await?;
        Ok(stored.into_iter().map(|n| n == 1).collect())
    }

    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, StoreError> {
        let reply: Option<String> = self
            .client
            .query(
                cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl)),
            )
            .await?;
        Ok(reply.is_some())
    }

    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.client.query(cmd("GET").arg(key)).await
    }

    async fn ttl(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let ms: i64 = self.client.query(cmd("PTTL").arg(key)).await?;
        Ok(match ms {
            -2 => None,
            ms if ms < 0 => Some(Duration::MAX),
            ms => Some(Duration::from_millis(ms.unsigned_abs())),
        })
    }

    async fn add_counters(&self, hits: u64, misses: u64) -> Result<(), StoreError> {
        let deltas: Vec<(&str, u64)> = [(HITS_KEY, hits), (MISSES_KEY, misses)]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        if deltas.is_empty() {
            return Ok(());
        }
        if self.client.is_cluster() {
            try_join_all(deltas.iter().map(|(k, n)| {
                let c = cmd("INCRBY").arg(*k).arg(*n).take();
                async move { self.client.query::<()>(&c).await }
            }))
            .await?;
        } else {
            let mut p = pipe();
            for (k, n) in &deltas {
                p.cmd("INCRBY").arg(*k).arg(*n).ignore();
            }
            self.client.query_pipeline::<()>(&p).await?;
        }
        Ok(())
    }

    async fn counters(&self) -> Result<(u64, u64), StoreError> {
        let n = |s: Option<String>| s.and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        // Two keys in different slots on a cluster: two GETs, concurrently.
        let (get_hits, get_misses) = (
            cmd("GET").arg(HITS_KEY).take(),
            cmd("GET").arg(MISSES_KEY).take(),
        );
        let (hits, misses) = tokio::join!(
            self.client.query::<Option<String>>(&get_hits),
            self.client.query::<Option<String>>(&get_misses),
        );
        Ok((n(hits?), n(misses?)))
    }

    async fn reset_counters(&self) -> Result<(), StoreError> {
        if self.client.is_cluster() {
            try_join_all([HITS_KEY, MISSES_KEY].map(|k| {
                let c = cmd("DEL").arg(k).take();
                async move { self.client.query::<()>(&c).await }
            }))
            .await?;
        } else {
            self.client
                .query::<()>(cmd("DEL").arg(HITS_KEY).arg(MISSES_KEY))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::kinds_for;
    use crate::db::InvalidationScope;
    use crate::domain::UserId;

    #[test]
    fn companions_share_the_entry_slot() {
        let id = UserId::random();
        for kind in kinds_for(InvalidationScope::All) {
            let k = kind.keys(id);
            let slot = Slot::for_key(&k.entry);
            assert_eq!(Slot::for_key(&k.state), slot, "{}", k.state);
            assert_eq!(Slot::for_key(&k.missing), slot, "{}", k.missing);
            assert_eq!(Slot::for_key(k.refresh_lock()), slot);
        }
    }
}
