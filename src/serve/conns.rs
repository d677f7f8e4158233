//! Accepting connections without letting misbehaving clients starve the others: the one
//! accept loop of the sidecar's MCP and admin ports and the controller's webhook and admin ports.
//!
//! Header reads time out (and so do idle keep-alive connections, which hyper treats the same way:
//! it waits for the next request's headers). Open connections are capped; at the cap the oldest
//! connection that is not inside a request — one that is idle or still dribbling its headers —
//! is closed to make room, so a client that sends whole requests is served while others stall.

use super::Body;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio_rustls::TlsAcceptor;

/// How connections are bounded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time to send a request's headers, and most time a keep-alive connection stays idle.
    pub header_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
}

/// One open connection: requests in progress (until their response body ends), and how to
/// close it.
struct Conn {
    busy: Arc<AtomicUsize>,
    evict: Arc<Notify>,
}

#[derive(Default)]
struct Open {
    next: u64,
    conns: BTreeMap<u64, Conn>,
}

impl Open {
    /// Registers a connection; at the cap, first closes the oldest one outside a request.
    /// `None` when every open connection is inside a request.
    fn admit(&mut self, cap: usize) -> Option<(u64, Arc<AtomicUsize>, Arc<Notify>)> {
        if self.conns.len() >= cap {
            let oldest_idle = self
                .conns
                .iter()
                .find(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
                .map(|(id, _)| *id)?;
            if let Some(c) = self.conns.remove(&oldest_idle) {
                c.evict.notify_one();
            }
        }
        let id = self.next;
        self.next += 1;
        let conn = Conn {
            busy: Arc::new(AtomicUsize::new(0)),
            evict: Arc::new(Notify::new()),
        };
        let handles = (id, conn.busy.clone(), conn.evict.clone());
        self.conns.insert(id, conn);
        Some(handles)
    }
}

/// Decrements a connection's busy count when the response body is done with (or dropped).
struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection counted as inside a request until it ends. Its
/// size hint is the inner body's, so whole answers keep their `Content-Length`.
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves HTTP/1 connections from `listener` with `handler` until `stop` changes; over TLS
/// when given an acceptor (the handshake must finish within the header timeout).
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    handler: F,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let open = Arc::new(Mutex::new(Open::default()));
    while let Some(stream) = accept(&listener, &mut stop).await {
        let admitted = open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(limits.max_connections.max(1));
        let Some((id, busy, evict)) = admitted else {
            tracing::warn!(
                max = limits.max_connections,
                "every connection is inside a request; refusing a new one"
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = counted(handler.clone(), busy);
        let (watcher, open, tls) = (graceful.watcher(), open.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, service, limits, watcher, &evict).await,
                Some(acceptor) => {
                    serve_tls(stream, acceptor, service, limits, watcher, &evict).await
                }
            }
            open.lock()
                .unwrap_or_else(|e| e.into_inner())
                .conns
                .remove(&id);
        });
    }
}

/// The next connection, or `None` once `stop` changes. Accept errors (out of file descriptors
/// and the like) back off rather than spin.
async fn accept(
    listener: &TcpListener,
    stop: &mut watch::Receiver<bool>,
) -> Option<tokio::net::TcpStream> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => return Some(stream),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return None,
        }
    }
}

/// The handler as a connection's service, counting the requests in flight on it (`busy`) until
/// each response's body is done, so an idle connection can be told from a busy one.
fn counted<F, Fut>(
    handler: F,
    busy: Arc<AtomicUsize>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send,
> + Clone
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    service_fn(move |req| {
        busy.fetch_add(1, Ordering::AcqRel);
        let guard = Busy(busy.clone());
        let fut = handler(req);
        async move {
            let resp = fut.await;
            let (parts, body) = resp.into_parts();
            let body = Tracked {
                inner: body,
                _busy: guard,
            }
            .boxed_unsync();
            Ok::<_, std::convert::Infallible>(Response::from_parts(parts, body))
        }
    })
}

/// A TLS connection: the handshake within the header timeout (or until evicted), then served.
async fn serve_tls<S>(
    stream: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    service: S,
    limits: Limits,
    watcher: Watcher,
    evict: &Notify,
) where
    S: hyper::service::HttpService<Incoming, ResBody = Body> + Send,
    S::Future: Send,
{
    let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(stream));
    tokio::select! {
        done = handshake => match done {
            Ok(Ok(tls)) => serve_connection(tls, service, limits, watcher, evict).await,
            Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!("TLS handshake timed out"),
        },
        _ = evict.notified() => {}
    }
}

/// Serves one connection until it ends, the shutdown closes it, or it is evicted (dropping it
/// closes its socket).
async fn serve_connection<I, S>(
    io: I,
    service: S,
    limits: Limits,
    graceful: Watcher,
    evict: &Notify,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body> + Send,
    S::Future: Send,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service);
    let conn = graceful.watch(conn);
    tokio::select! {
        _ = conn => {}
        _ = evict.notified() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_connection_outside_a_request_makes_room() {
        let mut open = Open::default();
        let (a, busy_a, _) = open.admit(2).unwrap();
        let (b, _, evict_b) = open.admit(2).unwrap();
        busy_a.fetch_add(1, Ordering::AcqRel);
        let (c, _, _) = open.admit(2).expect("b is idle, so it makes room");
        assert_eq!(open.conns.keys().copied().collect::<Vec<_>>(), vec![a, c]);
        assert!(
            futures_util::FutureExt::now_or_never(evict_b.notified()).is_some(),
            "b was told to close"
        );
        let _ = b;
        let (_, busy_c, _) = (c, open.conns[&c].busy.clone(), ());
        busy_c.fetch_add(1, Ordering::AcqRel);
        assert!(
            open.admit(2).is_none(),
            "every connection is inside a request"
        );
    }
}
