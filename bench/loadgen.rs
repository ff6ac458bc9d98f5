//! Load generator for `bench/run.sh`: drives a running user-api over HTTP and prints
//! throughput and latency percentiles per scenario. Scenarios run one after the other in
//! one process, so their ratios are comparable even on a noisy shared machine.
//!
//! Usage: loadgen <base-url> <admin-token> <ids-file> [concurrency] [seconds-per-scenario]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

struct Outcome {
    name: &'static str,
    latencies_us: Vec<u64>,
    errors: usize,
    elapsed: Duration,
}

impl Outcome {
    fn pct(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    fn rps(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    /// GET of ids that are already cached.
    HotGet,
    /// GET of ids read for the first time (cache miss, database read, fill).
    ColdGet,
    /// POST batch of 100 ids, all cached.
    Batch,
    /// PATCH of one field (database write + invalidation).
    Write,
}

/// What every scenario shares.
struct Target {
    client: reqwest::Client,
    base: String,
    token: String,
    ids: Arc<Vec<String>>,
    concurrency: usize,
}

async fn run(name: &'static str, kind: Kind, t: &Target, duration: Duration) -> Outcome {
    let (client, base, token, ids, concurrency) = (
        &t.client,
        t.base.as_str(),
        t.token.as_str(),
        t.ids.clone(),
        t.concurrency,
    );
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, base, token, ids, next) = (
            client.clone(),
            base.to_owned(),
            token.to_owned(),
            ids.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let req = match kind {
                    Kind::HotGet => {
                        let id = &ids[n % 1000.min(ids.len())];
                        client.get(format!("{base}/api/profiles/{id}"))
                    }
                    Kind::ColdGet => {
                        // Ids from 1000 on were not read before this scenario.
                        let Some(id) = ids.get(1000 + n) else { break };
                        client.get(format!("{base}/api/profiles/{id}"))
                    }
                    Kind::Batch => {
                        let start = (n * 100) % 1000;
                        let chunk: Vec<&String> = ids[start..start + 100].iter().collect();
                        client
                            .post(format!("{base}/api/profiles/batch"))
                            .json(&json!(chunk))
                    }
                    Kind::Write => {
                        let id = &ids[n % 1000.min(ids.len())];
                        client
                            .patch(format!("{base}/api/profiles/{id}"))
                            .json(&json!({"phone": format!("090-{n:08}")}))
                    }
                };
                let t = Instant::now();
                match req.bearer_auth(&token).send().await {
                    Ok(res) if res.status().is_success() => {
                        let _ = res.bytes().await;
                        lat.push(t.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            latencies_us.extend(l);
            errors += e;
        }
    }
    latencies_us.sort_unstable();
    Outcome {
        name,
        latencies_us,
        errors,
        elapsed: started.elapsed(),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: loadgen <base-url> <admin-token> <ids-file> [concurrency] [seconds]");
        std::process::exit(2);
    }
    let base = args[1].trim_end_matches('/').to_owned();
    let token = args[2].clone();
    let ids: Vec<String> = std::fs::read_to_string(&args[3])
        .expect("ids file")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(ids.len() >= 2000, "need at least 2000 ids");
    let ids = Arc::new(ids);
    let concurrency: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(32);
    let secs: u64 = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(10);
    let dur = Duration::from_secs(secs);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let target = Target {
        client,
        base,
        token,
        ids,
        concurrency,
    };

    // Warm the hot set (first 1000 ids) so the hot scenarios are pure cache hits.
    let _ = run("warm-up", Kind::HotGet, &target, Duration::from_secs(2)).await;

    let mut outcomes = Vec::new();
    outcomes.push(run("GET cached (hit)", Kind::HotGet, &target, dur).await);
    outcomes.push(run("GET uncached (miss + fill)", Kind::ColdGet, &target, dur).await);
    outcomes.push(run("POST batch of 100 (cached)", Kind::Batch, &target, dur).await);
    outcomes.push(run("PATCH (write + invalidate)", Kind::Write, &target, dur).await);

    println!("| scenario | requests | errors | req/s | p50 ms | p95 ms | p99 ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for o in &outcomes {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            o.name,
            o.latencies_us.len(),
            o.errors,
            o.rps(),
            o.pct(0.50),
            o.pct(0.95),
            o.pct(0.99)
        );
    }
    let hit = &outcomes[0];
    let miss = &outcomes[1];
    if miss.rps() > 0.0 && hit.pct(0.5) > 0.0 {
        println!(
            "\nratio cached/uncached: throughput x{:.2}, p50 latency x{:.2} lower",
            hit.rps() / miss.rps(),
            miss.pct(0.5) / hit.pct(0.5)
        );
    }
}
