//! The accept loop shared by the agent listener and the HTTPS API: at most
//! `max` connections at once, accept errors (e.g. too many open files) that
//! slow the loop down instead of stopping it, and a bounded wait for open
//! connections when `shutdown` fires.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

/// Accepts until `shutdown`, running `handle` for each connection on its
/// own task; then waits at most `drain` for those tasks.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    max: usize,
    shutdown: CancellationToken,
    drain: Duration,
    what: &'static str,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tracker = TaskTracker::new();
    let conns = Arc::new(Semaphore::new(max));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = conns.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = handle(stream, peer);
        tracker.spawn(async move {
            let _permit = permit;
            conn.await
        });
    }
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        warn!(listener = what, "connections still open after {} s; closing them", drain.as_secs());
    }
}
