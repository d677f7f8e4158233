//! HTTP serving shared by the sidecar and the controller: the one accept loop ([`conns`]:
//! timeouts, the connection cap, optional TLS), the admin endpoints ([`admin`]: `/metrics`,
//! `/livez`, `/readyz`), the serving certificate swapped in place ([`tls`]), and the shutdown
//! signal.

pub mod admin;
pub mod conns;
pub mod tls;

pub use conns::{accept_loop, Limits};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response served (whole answers and streamed upstream bodies alike).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A whole body.
/// An outgoing HTTPS connector trusting Mozilla's roots (built into the binary, so a `FROM
/// scratch` image reaches public issuers) and the system's (`SSL_CERT_FILE` or `SSL_CERT_DIR`
/// name others, such as a private CA). `https_only`: refuse plain `http://` URLs.
pub fn https_connector(
    https_only: bool,
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
        tokio_rustls::rustls::ClientConfig::builder()
            .with_root_certificates(trusted_roots())
            .with_no_client_auth(),
    );
    match https_only {
        true => builder.https_only().enable_http1().build(),
        false => builder.https_or_http().enable_http1().build(),
    }
}

/// Mozilla's roots and whatever the system's store (or `SSL_CERT_FILE`) holds; unreadable
/// entries are skipped.
fn trusted_roots() -> tokio_rustls::rustls::RootCertStore {
    let mut roots = tokio_rustls::rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "a system CA certificate could not be read");
    }
    roots.add_parsable_certificates(native.certs);
    roots
}

/// An error with its causes, `outer: inner: …` (hyper's client errors say little alone:
/// "client error (Connect)" hides the refused connection or the unknown certificate under it).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A response with a whole body and no headers.
pub fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r
}

/// A response with a whole JSON body.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = respond(status, body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    /// A `FROM scratch` image has no CA files: the public roots must come from the binary.
    #[test]
    fn outgoing_https_trusts_the_public_roots_without_any_ca_file() {
        let roots = super::trusted_roots();
        assert!(
            roots.len() >= webpki_roots::TLS_SERVER_ROOTS.len() && roots.len() > 100,
            "{} roots",
            roots.len()
        );
    }
}
