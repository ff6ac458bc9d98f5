//! The cache store on Redis or Redis Cluster, over [`RedisClient`].
//!
//! On a single node, multi-key work is one command or one pipeline (one round trip). On a
//! cluster the keys of one user live in different slots, so work is grouped by slot and
//! the groups are sent concurrently; no command ever spans two slots.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use ::redis::{Script, cmd, pipe};
use async_trait::async_trait;
use futures::future::try_join_all;

use super::store::{CacheStore, Fill, HITS_KEY, MISSES_KEY};
use crate::redis::{RedisClient, StoreError, key_slot};

/// The guarded fill: store ARGV[2] for ARGV[3] ms only while KEYS[1] still holds exactly
/// ARGV[1] ("" standing for an absent key). A writer that committed after the reader looked
/// has put a fresh marker there, so a fill carrying an older row is refused.
static FILL_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if not cur then cur = '' end
if cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
",
    )
});

/// Cache entries and shared counters in Redis.
pub struct RedisStore {
    client: RedisClient,
}

impl RedisStore {
    /// A store over `client`.
    pub fn new(client: RedisClient) -> Self {
        client.register_script(&FILL_SCRIPT);
        Self { client }
    }

    /// Indices of `keys` grouped by slot (a single group on a single node).
    fn groups<'k>(&self, keys: impl Iterator<Item = &'k str>) -> Vec<Vec<usize>> {
        if !self.client.is_cluster() {
            return vec![keys.enumerate().map(|(i, _)| i).collect()];
        }
        let mut by_slot: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, k) in keys.enumerate() {
            by_slot.entry(key_slot(k.as_bytes())).or_default().push(i);
        }
        by_slot.into_values().collect()
    }

    fn fill_args(fill: &Fill) -> (Vec<String>, Vec<String>) {
        (
            vec![fill.key.clone()],
            vec![
                fill.expected.clone().unwrap_or_default(),
                fill.value.clone(),
                millis(fill.ttl).to_string(),
            ],
        )
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl CacheStore for RedisStore {
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

    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let groups = self.groups(keys.iter().map(String::as_str));
        let answers = try_join_all(groups.iter().map(|idx| {
            let mut c = cmd("MGET");
            for &i in idx {
                c.arg(&keys[i]);
            }
            async move { self.client.query::<Vec<Option<String>>>(&c).await }
        }))
        .await?;
        let mut out = vec![None; keys.len()];
        for (idx, values) in groups.iter().zip(answers) {
            for (&i, v) in idx.iter().zip(values) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    async fn set_many(
        &self,
        entries: &[(String, String)],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let ttl = millis(ttl);
        let groups = self.groups(entries.iter().map(|(k, _)| k.as_str()));
        try_join_all(groups.iter().map(|idx| {
            let mut p = pipe();
            for &i in idx {
                let (k, v) = &entries[i];
                p.cmd("SET").arg(k).arg(v).arg("PX").arg(ttl).ignore();
            }
            async move { self.client.query_pipeline::<()>(&p).await }
        }))
        .await?;
        Ok(())
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

    async fn fill(&self, fill: &Fill) -> Result<bool, StoreError> {
        let (keys, args) = Self::fill_args(fill);
        let stored: i64 = self.client.run_script(&FILL_SCRIPT, &keys, &args).await?;
        Ok(stored == 1)
    }

    async fn fill_many(&self, fills: &[Fill]) -> Result<usize, StoreError> {
        if fills.is_empty() {
            return Ok(0);
        }
        let groups = self.groups(fills.iter().map(|f| f.key.as_str()));
        let answers = try_join_all(groups.iter().map(|idx| {
            let mut p = pipe();
            for &i in idx {
                let (keys, args) = Self::fill_args(&fills[i]);
                self.client.add_script(&mut p, &FILL_SCRIPT, &keys, &args);
            }
            async move { self.client.query_pipeline::<Vec<i64>>(&p).await }
        }))
        .await?;
        Ok(answers.iter().flatten().filter(|&&n| n == 1).count())
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
        let keys = [HITS_KEY.to_owned(), MISSES_KEY.to_owned()];
        let v = self.mget(&keys).await?;
        let n = |s: &Option<String>| {
            s.as_deref()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((n(&v[0]), n(&v[1])))
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
