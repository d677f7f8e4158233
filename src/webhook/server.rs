//! The HTTPS server every controller replica runs: `/mutate` (pods) and `/validate`
//! (McpPolicies). Until the McpPolicy cache has synced and a serving certificate is loaded it is
//! not ready, and it answers every review with a refusal rather than skip injection.

use super::review::{review_pod, review_policy, Outcome};
use crate::cluster::{in_namespace, InjectConfig};
use crate::crd::McpPolicy;
use crate::metrics::ControllerMetrics;
use crate::serve::tls::{self, CertSlot};
use crate::serve::{accept_loop, json, Body, Limits};
use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::server::graceful::GracefulShutdown;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::admission::AdmissionResponse;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Largest AdmissionReview accepted (the API server's own request limit is 3 MiB of object).
pub const MAX_REVIEW_BYTES: usize = 8 << 20;

/// What the handlers read.
pub struct WebhookState {
    pub policies: Store<McpPolicy>,
    /// Set once the McpPolicy cache has synced.
    pub synced: AtomicBool,
    pub inject: ArcSwap<InjectConfig>,
    pub certs: Arc<CertSlot>,
    pub metrics: ControllerMetrics,
    /// Records Injected / InjectionSkipped Events; `None` in tests without a cluster.
    pub recorder: Option<Recorder>,
    /// Bounds the Events being written at once (an admission storm must not pile up tasks).
    pub event_slots: Arc<Semaphore>,
}

impl WebhookState {
    pub fn new(
        policies: Store<McpPolicy>,
        inject: InjectConfig,
        metrics: ControllerMetrics,
        recorder: Option<Recorder>,
    ) -> Arc<WebhookState> {
        Arc::new(WebhookState {
            policies,
            synced: AtomicBool::new(false),
            inject: ArcSwap::from_pointee(inject),
            certs: Arc::default(),
            metrics,
            recorder,
            event_slots: Arc::new(Semaphore::new(64)),
        })
    }

    /// Why this replica cannot answer reviews yet, if it cannot.
    pub fn unready_reason(&self) -> Option<&'static str> {
        if !self.synced.load(Ordering::Acquire) {
            Some("the McpPolicy cache has not synced")
        } else if !self.certs.loaded() {
            Some("no serving certificate is loaded")
        } else {
            None
        }
    }
}

/// Open connections at most: the API server keeps a few per replica.
const MAX_CONNECTIONS: usize = 256;
/// Time to finish the TLS handshake and send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTPS until `stop` turns true.
pub async fn serve(listener: TcpListener, state: Arc<WebhookState>, stop: watch::Receiver<bool>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::config(state.certs.clone()));
    let limits = Limits {
        header_timeout: HEADER_TIMEOUT,
        max_connections: MAX_CONNECTIONS,
    };
    let graceful = Arc::new(GracefulShutdown::new());
    accept_loop(
        listener,
        stop,
        graceful,
        limits,
        Some(acceptor),
        move |req| {
            let st = state.clone();
            async move { handle(&st, req).await }
        },
    )
    .await
}

/// One request: route, read the review (bounded), answer.
pub async fn handle(state: &Arc<WebhookState>, req: Request<Incoming>) -> Response<Body> {
    let webhook = match (req.method(), req.uri().path()) {
        (&http::Method::POST, "/mutate") => "mutate",
        (&http::Method::POST, "/validate") => "validate",
        (&http::Method::POST, "/guard") => "guard",
        (&http::Method::POST, "/mutate-approval") => "mutate-approval",
        (&http::Method::POST, "/validate-approval") => "validate-approval",
        _ => return json(StatusCode::NOT_FOUND, &br#"{"error":"not found"}"#[..]),
    };
    let started = Instant::now();
    let body = match Limited::new(req.into_body(), MAX_REVIEW_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let msg =
                format!("cannot read the AdmissionReview (limit {MAX_REVIEW_BYTES} bytes): {e}");
            let review = AdmissionResponse::invalid(msg).into_review();
            let mut r = json(
                StatusCode::OK,
                serde_json::to_vec(&review)
                    .expect("serialising a value built in memory cannot fail"),
            );
            // The rest of the body is never read, so this connection cannot go on.
            r.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            return r;
        }
    };
    let out = answer(state, webhook, &body);
    state
        .metrics
        .admission_duration
        .with_label_values(&[webhook])
        .observe(started.elapsed().as_secs_f64());
    json(StatusCode::OK, out)
}

/// The AdmissionReview answer for `body`, as JSON, with metrics and Events.
pub fn answer(state: &Arc<WebhookState>, webhook: &str, body: &[u8]) -> Vec<u8> {
    if let Some(why) = state.unready_reason() {
        let review = super::review::refuse(
            body,
            format!("mcp-warden is not ready ({why}); retry shortly"),
        );
        if webhook == "mutate" {
            state.metrics.injections.with_label_values(&["error"]).inc();
        }
        return serde_json::to_vec(&review)
            .expect("serialising a value built in memory cannot fail");
    }
    if webhook == "validate" {
        return serde_json::to_vec(&review_policy(body))
            .expect("serialising a value built in memory cannot fail");
    }
    if webhook == "mutate-approval" {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        return encode(&super::approval::mutate(body, now));
    }
    if webhook == "validate-approval" {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let (review, refused) = super::approval::validate(body, now);
        if let Some(why) = refused {
            tracing::info!(reason = %why, "refused an McpApproval change");
        }
        return serde_json::to_vec(&review)
            .expect("serialising a value built in memory cannot fail");
    }
    if webhook == "guard" {
        let (review, refused) = super::guard::review_update(body);
        if let Some(why) = refused {
            tracing::info!(reason = %why, "refused an update of a guarded pod");
        }
        return serde_json::to_vec(&review)
            .expect("serialising a value built in memory cannot fail");
    }
    let cfg = state.inject.load();
    let r = review_pod(body, |ns| in_namespace(&state.policies, ns), &cfg);
    state
        .metrics
        .injections
        .with_label_values(&[r.outcome.label()])
        .inc();
    if !r.dry_run {
        if let Some(pod) = r.pod {
            record(state, &r.outcome, pod);
        }
    }
    encode(&r.review)
}

/// The review as JSON, with the patch as base64 text (the form Go writes for `[]byte`).
fn encode<T: serde::Serialize>(review: &T) -> Vec<u8> {
    use base64::Engine as _;
    let mut v =
        serde_json::to_value(review).expect("serialising a value built in memory cannot fail");
    if let Some(patch) = v.pointer_mut("/response/patch") {
        if let Some(bytes) = patch.as_array() {
            let raw: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64())
                .map(|b| b as u8)
                .collect();
            *patch =
                serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(raw));
        }
    }
    serde_json::to_vec(&v).expect("serialising a value built in memory cannot fail")
}

/// Records the Injected / InjectionSkipped / InjectionRefused Event in the background.
fn record(state: &Arc<WebhookState>, outcome: &Outcome, pod: ObjectReference) {
    let Some(recorder) = state.recorder.clone() else {
        return;
    };
    let (type_, reason, note) = match outcome {
        Outcome::Injected { policy } => (
            EventType::Normal,
            "Injected",
            format!("mcp-warden sidecar injected for McpPolicy {policy}"),
        ),
        Outcome::Skipped { reason } => (EventType::Normal, "InjectionSkipped", reason.clone()),
        Outcome::Refused { reason } => (EventType::Warning, "InjectionRefused", reason.clone()),
        Outcome::Error { .. } => return,
    };
    let Ok(permit) = state.event_slots.clone().try_acquire_owned() else {
        tracing::debug!("event backlog full; not recording {reason}");
        return;
    };
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Admit".into(),
        secondary: None,
    };
    tokio::spawn(async move {
        if let Err(e) = recorder.publish(&ev, &pod).await {
            tracing::debug!(error = %e, "could not record an admission Event");
        }
        drop(permit);
    });
}
