//! The keys sidecars verify tokens with: the cluster's ServiceAccount issuer and key set, read
//! from the API server (`/.well-known/openid-configuration`, `/openid/v1/jwks`), or an external
//! OIDC issuer's key set fetched from its `jwksFrom` URL. Each source is fetched at most once per
//! refresh interval whatever the number of policies using it (sooner after a failure), bounded in
//! time and size, and checked to hold a usable key before it is rendered.
//!
//! What is rendered is the key set with an `issuer` member: the sidecar reads it from the
//! policy's ConfigMap (key `jwks.json`) and makes no call of its own.

use crate::crd::McpPolicySpec;
use crate::identity::Verifier;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Largest key set (or discovery document) read.
const MAX_BODY: usize = 1 << 20;
/// Time a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How soon a failed fetch is tried again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Where a policy's keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// This cluster's ServiceAccount issuer.
    Cluster,
    /// An external issuer's key set: (issuer, URL).
    Url { issuer: String, url: String },
}

impl Source {
    /// The source an McpPolicy's identity needs, if it verifies tokens.
    pub fn of(spec: &McpPolicySpec) -> Option<Source> {
        let id = spec.policy.identity.as_ref()?;
        if id.service_account.is_some() {
            return Some(Source::Cluster);
        }
        id.jwt.as_ref().map(|j| Source::Url {
            issuer: j.issuer.clone(),
            url: j.jwks_from.clone(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{what}: {source}")]
    Api {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    Http(String),
    #[error("{what} is not usable: {why}")]
    Invalid { what: String, why: String },
}

struct Entry {
    at: Instant,
    result: Result<Arc<str>, String>,
}

/// Key sets by source, fetched when stale.
pub struct KeySets {
    refresh: Duration,
    /// One slot per source, each locked on its own: a slow issuer holds up only the policies
    /// that use it.
    entries: Mutex<HashMap<Source, Slot>>,
    https: OnceLock<HttpsClient>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Entry>>>;

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

impl KeySets {
    pub fn new(refresh: Duration) -> KeySets {
        KeySets {
            refresh,
            entries: Mutex::default(),
            https: OnceLock::new(),
        }
    }

    /// How often key sets are fetched again.
    pub fn refresh(&self) -> Duration {
        self.refresh
    }

    /// The rendered key set of `source` (`{"issuer": …, "keys": […]}`), fetched if stale, or
    /// why it could not be had. One fetch per source at a time: concurrent reconciles wait.
    pub async fn get(&self, client: &kube::Client, source: &Source) -> Result<Arc<str>, String> {
        let slot: Slot = self
            .entries
            .lock()
            .expect("key set slots lock")
            .entry(source.clone())
            .or_default()
            .clone();
        let mut entry = slot.lock().await;
        if let Some(e) = entry.as_ref() {
            let ttl = match e.result {
                Ok(_) => self.refresh,
                Err(_) => RETRY_AFTER_FAILURE.min(self.refresh),
            };
            if e.at.elapsed() < ttl {
                return e.result.clone();
            }
        }
        let result = tokio::time::timeout(FETCH_TIMEOUT, self.fetch(client, source))
            .await
            .unwrap_or_else(|_| {
                Err(FetchError::Http(format!(
                    "no answer within {} s",
                    FETCH_TIMEOUT.as_secs()
                )))
            })
            .map(Arc::from)
            .map_err(|e| e.to_string());
        if let Err(why) = &result {
            tracing::warn!(?source, %why, "could not fetch the key set");
        }
        *entry = Some(Entry {
            at: Instant::now(),
            result: result.clone(),
        });
        result
    }

    async fn fetch(&self, client: &kube::Client, source: &Source) -> Result<String, FetchError> {
        match source {
            Source::Cluster => {
                let discovery = api_get(client, "/.well-known/openid-configuration").await?;
                let issuer = serde_json::from_str::<Value>(&discovery)
                    .ok()
                    .and_then(|d| d["issuer"].as_str().map(str::to_owned))
                    .ok_or_else(|| FetchError::Invalid {
                        what: "the API server's OpenID configuration".into(),
                        why: "it names no issuer".into(),
                    })?;
                let jwks = api_get(client, "/openid/v1/jwks").await?;
                render(&issuer, jwks.as_bytes(), "the API server's key set")
            }
            Source::Url { issuer, url } => {
                let jwks = self.https_get(url).await?;
                render(issuer, &jwks, url)
            }
        }
    }

    async fn https_get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let client = self.https.get_or_init(https_client);
        let uri: http::Uri = url
            .parse()
            .map_err(|e| FetchError::Http(format!("{url}: {}", crate::serve::error_chain(&e))))?;
        let req = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| FetchError::Http(format!("{url}: {}", crate::serve::error_chain(&e))))?;
        let resp = client
            .request(req)
            .await
            .map_err(|e| FetchError::Http(format!("{url}: {}", crate::serve::error_chain(&e))))?;
        if !resp.status().is_success() {
            return Err(FetchError::Http(format!("{url}: HTTP {}", resp.status())));
        }
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| FetchError::Http(format!("{url}: {e} (at most {MAX_BODY} bytes)")))?;
        Ok(body.to_bytes().to_vec())
    }
}

/// An HTTPS-only client trusting the system's roots (`SSL_CERT_FILE` adds others).
fn https_client() -> HttpsClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(crate::serve::https_connector(true))
}

/// A GET of the API server (trusted: its answer is read whole, then checked for size).
async fn api_get(client: &kube::Client, path: &'static str) -> Result<String, FetchError> {
    let req = http::Request::get(path)
        .body(Vec::new())
        .expect("a GET of a fixed path is a valid request");
    let text = client
        .request_text(req)
        .await
        .map_err(|source| FetchError::Api { what: path, source })?;
    if text.len() > MAX_BODY {
        return Err(FetchError::Invalid {
            what: path.into(),
            why: format!("over {MAX_BODY} bytes"),
        });
    }
    Ok(text)
}

/// The key set as rendered for sidecars: its keys, and the issuer they sign for. Refused unless
/// the sidecar's own verifier finds a usable key in it.
pub fn render(issuer: &str, jwks: &[u8], what: &str) -> Result<String, FetchError> {
    let invalid = |why: String| FetchError::Invalid {
        what: what.to_owned(),
        why,
    };
    Verifier::new(issuer, &[], jwks).map_err(|e| invalid(e.to_string()))?;
    let set: Value = serde_json::from_slice(jwks).map_err(|e| invalid(e.to_string()))?;
    let doc = serde_json::json!({"issuer": issuer, "keys": set["keys"]});
    Ok(serde_json::to_string(&doc).expect("a JSON value serialises"))
}

/// The admin API's key file: a rendered key set with the one subject the sidecar accepts.
pub fn with_subject(rendered: &str, subject: &str) -> String {
    let mut doc: Value = serde_json::from_str(rendered).unwrap_or_default();
    if let Some(o) = doc.as_object_mut() {
        o.insert("subject".into(), Value::String(subject.to_owned()));
    }
    serde_json::to_string(&doc).expect("a JSON value serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWKS: &str = include_str!("../../tests/fixtures/identity/rsa-test-jwks.json");

    #[test]
    fn a_key_set_is_rendered_with_its_issuer_only_when_it_holds_a_usable_key() {
        let r = render("https://issuer.example", JWKS.as_bytes(), "test").unwrap();
        let v: Value = serde_json::from_str(&r).unwrap();
        assert_eq!(v["issuer"], "https://issuer.example");
        assert_eq!(v["keys"][0]["kid"], "test-rsa");
        // The sidecar reads it back to the same verifier.
        assert!(Verifier::new("https://issuer.example", &[], r.as_bytes()).is_ok());
        let e = render("https://i", br#"{"keys": []}"#, "the set").unwrap_err();
        assert!(e.to_string().starts_with("the set is not usable"), "{e}");
        assert!(render("https://i", b"<html>", "x").is_err());
    }
}
