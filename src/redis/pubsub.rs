//! The event subscriber's connection (events in): a plain RESP2 pub/sub connection of its
//! own to the node (or to one cluster seed: cluster `PUBLISH` is broadcast to every node),
//! kept alive with `PING`, and made again with back-off whenever it is lost, cycling
//! through the seeds. Pub/sub keeps nothing: what is published while the connection is
//! down is lost to this subscriber (see `docs/events.md`).

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// First wait before reconnecting; doubled after each failed attempt up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often an idle subscription is checked with `PING` (a peer that vanished without
/// closing the socket is noticed this way).
const PING_EVERY: Duration = Duration::from_secs(5);
/// Longest wait for that `PING`'s answer.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// One message as received.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The channel it was published on.
    pub channel: String,
    /// The payload, as bytes (it may not even be UTF-8).
    pub payload: Vec<u8>,
}

/// Subscribes to channels on a connection of its own; see [`Subscriber::run`].
pub struct Subscriber {
    targets: Vec<::redis::Client>,
    connect_timeout: Duration,
}

/// Why a subscription ended.
enum Ended {
    Stopped,
    Lost(&'static str),
}

impl Subscriber {
    pub(super) fn new(targets: Vec<::redis::Client>, connect_timeout: Duration) -> Self {
        Self {
            targets,
            connect_timeout,
        }
    }

    /// Until `stop` is cancelled: subscribes to the channel patterns `patterns`
    /// (`PSUBSCRIBE`) and hands every message to
    /// `handle`, one at a time, in the order received. A lost or refused connection is
    /// made again (the next seed on a cluster) after a back-off from 100 ms doubling to
    /// 5 s; `events_in_connected` says whether a subscription stands now and
    /// `events_in_reconnects_total` counts the subscriptions made after the first.
    pub async fn run<F, Fut>(self, patterns: &[&str], stop: CancellationToken, mut handle: F)
    where
        F: FnMut(Incoming) -> Fut,
        Fut: Future<Output = ()>,
    {
        if self.targets.is_empty() {
            return;
        }
        let mut backoff = MIN_BACKOFF;
        let mut attempt = 0usize;
        let mut subscribed_before = false;
        let mut failing = false;
        loop {
            let target = &self.targets[attempt % self.targets.len()];
            attempt += 1;
            let connect =
                tokio::time::timeout(self.connect_timeout * 2, Self::subscribe(target, patterns));
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                r = connect => r,
            };
            match outcome {
                Ok(Ok(pubsub)) => {
                    metrics::gauge!("events_in_connected").set(1.0);
                    if subscribed_before {
                        metrics::counter!("events_in_reconnects_total").increment(1);
                        tracing::info!(?patterns, "event subscription restored");
                    } else {
                        tracing::info!(?patterns, "subscribed to events");
                    }
                    subscribed_before = true;
                    failing = false;
                    backoff = MIN_BACKOFF;
                    let ended = Self::pump(pubsub, &stop, &mut handle).await;
                    metrics::gauge!("events_in_connected").set(0.0);
                    match ended {
                        Ended::Stopped => return,
                        Ended::Lost(why) => {
                            tracing::warn!(
                                reason = why,
                                "event subscription lost; reconnecting (messages published meanwhile are not received)"
                            );
                        }
                    }
                }
                Ok(Err(e)) => {
                    // Once per outage, not at every attempt.
                    if !failing {
                        tracing::warn!(error = %e, "cannot subscribe to events; retrying with back-off");
                    }
                    failing = true;
                }
                Err(_) => {
                    if !failing {
                        tracing::warn!(
                            "cannot subscribe to events (timed out); retrying with back-off"
                        );
                    }
                    failing = true;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn subscribe(
        target: &::redis::Client,
        patterns: &[&str],
    ) -> ::redis::RedisResult<::redis::aio::PubSub> {
        let mut pubsub = target.get_async_pubsub().await?;
        pubsub.psubscribe(patterns).await?;
        Ok(pubsub)
    }

    /// Hands messages to `handle` until the connection ends, a `PING` goes unanswered, or
    /// `stop`.
    async fn pump<F, Fut>(
        pubsub: ::redis::aio::PubSub,
        stop: &CancellationToken,
        handle: &mut F,
    ) -> Ended
    where
        F: FnMut(Incoming) -> Fut,
        Fut: Future<Output = ()>,
    {
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ended::Stopped,
                msg = stream.next() => match msg {
                    Some(m) => {
                        handle(Incoming {
                            channel: m.get_channel_name().to_owned(),
                            payload: m.get_payload_bytes().to_vec(),
                        })
                        .await;
                    }
                    None => return Ended::Lost("connection closed"),
                },
                _ = ping.tick() => {
                    let answered = tokio::time::timeout(PING_TIMEOUT, sink.ping::<::redis::Value>()).await;
                    if !matches!(answered, Ok(Ok(_))) {
                        return Ended::Lost("ping unanswered");
                    }
                }
            }
        }
    }
}
