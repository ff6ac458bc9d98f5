//! The integration tests: one crate, so one binary to build and link (as zero2prod and
//! Svix lay theirs out). Every module talks to the real service over HTTP, to a real
//! PostgreSQL (a fresh database per test) or SQLite file, and to real Redis.
//!
//! `helpers` is the harness: [`helpers::TestApp::builder`] configures and starts a
//! service (backend, store, limits, proxy, anything else), `helpers::db` makes databases,
//! `helpers::redis` Redis servers, clusters and proxies, `helpers::ratelimit` the rate-limit
//! checks. Backends and stores are test parameters (`rstest`'s `#[values]`).
//!
//! To add a test file: put it here as `tests/it/<name>.rs`, add `mod <name>;` below, and
//! import what it needs from `crate::helpers` (no harness module of its own, no
//! `#[path]`). Its tests are then named `<name>::<test>`: `cargo nextest run <name>::`
//! runs that file alone.

mod helpers;

mod api_auth;
mod api_profiles;
mod api_robustness;
mod auth_keys;
mod cache_behaviour;
mod cache_contract;
mod cache_counting;
mod cache_outage;
mod cache_race;
mod cache_redis_client;
mod cli;
mod db_outage;
mod db_takeover;
mod events;
mod http_edge;
mod login_storm;
mod openapi;
mod ratelimit_cluster;
mod ratelimit_memory;
mod ratelimit_redis;
mod repo;
mod request_id;
mod revocation;
mod settings;
mod shutdown;
mod stack_ops;
