//! Graceful shutdown: cancelling the token stops the accept loop and asks every
//! connection to close after its in-flight request; [`super::serve`] returns once all have, or at
//! once when its `abort` token is cancelled (the caller's bound on the grace period), which
//! drops every connection with what its request held.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Once the loop has stopped accepting: waits for every connection to finish, or, once
/// `abort` is cancelled, for them to be dropped with what their requests held.
pub(super) async fn wait_for_connections(tracker: TaskTracker, abort: &CancellationToken) {
    tracker.close();
    tokio::select! {
        _ = tracker.wait() => {}
        _ = abort.cancelled() => {
            tracing::warn!(
                connections = tracker.len(),
                "closing connections whose requests are still in flight"
            );
            tracker.wait().await;
        }
    }
}
