//! The admin port of the sidecar and the controller: `/metrics` (Prometheus text), `/livez`
//! and `/readyz` (with the reason when not ready), and any API the process adds ([`Api`]).

use super::{respond, Body, Limits};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Connections the admin port keeps open at most (probes and scrapes, not clients).
const MAX_CONNECTIONS: usize = 64;

/// What the admin port reports.
pub trait Health: Send + Sync + 'static {
    /// The metrics, in Prometheus text format.
    fn metrics(&self) -> Vec<u8>;
    /// Why the process is not ready, if it is not.
    fn unready(&self) -> Option<String>;
}

/// The answer to one admin request.
pub fn answer(health: &dyn Health, path: &str) -> Response<Body> {
    match path {
        "/metrics" => {
            let mut r = respond(StatusCode::OK, health.metrics());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/livez" => respond(StatusCode::OK, "ok\n"),
        "/readyz" => match health.unready() {
            None => respond(StatusCode::OK, "ready\n"),
            Some(why) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => respond(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// An API served on the admin port besides the probes: the paths it takes, and its handler.
pub struct Api {
    pub handles: fn(&str) -> bool,
    pub handle: Box<
        dyn Fn(Request<Incoming>) -> futures_util::future::BoxFuture<'static, Response<Body>>
            + Send
            + Sync,
    >,
}

/// Serves the admin port until `stop` changes.
pub async fn serve(
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
    header_timeout: std::time::Duration,
    health: Arc<dyn Health>,
    api: Option<Api>,
) {
    let api = api.map(Arc::new);
    let limits = Limits {
        header_timeout,
        max_connections: MAX_CONNECTIONS,
    };
    super::accept_loop(
        listener,
        stop,
        graceful,
        limits,
        None,
        move |req: Request<Incoming>| -> futures_util::future::BoxFuture<'static, Response<Body>> {
            match &api {
                Some(api) if (api.handles)(req.uri().path()) => (api.handle)(req),
                _ => Box::pin(std::future::ready(answer(&*health, req.uri().path()))),
            }
        },
    )
    .await
}
