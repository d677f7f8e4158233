//! Webhook certificates in the cluster: the leader keeps the Secret current (created
//! create-only, so replicas never race; updated with its resourceVersion) and `caBundle` patched
//! into the webhook configurations, re-patching when someone resets it. Every replica loads the
//! serving certificate from the Secret and swaps it in without a restart.

use crate::cluster::webhooks::{webhook_configurations, Endpoint};
use crate::cluster::{MANAGED_BY, MANAGER};
use crate::metrics::ControllerMetrics;
use crate::serve::tls::CertSlot;
use crate::webhook::tls::{self, Lifetimes, Material};
use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::sync::Arc;

/// Why the certificate work failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// The certificate manager's settings.
#[derive(Debug, Clone)]
pub struct CertConfig {
    pub namespace: String,
    pub secret: String,
    /// Name of both webhook configurations.
    pub webhook_config: String,
    pub endpoint: Endpoint,
    pub lifetimes: Lifetimes,
    /// Set on the Secret when the controller creates it (see [`installation_owner`]).
    pub owner: Option<OwnerReference>,
}

/// What the objects the controller creates for itself (the certificate Secret, the leader
/// Lease) belong to: the mutating webhook configuration the chart installs, so that
/// `helm uninstall` takes them with it by garbage collection. None when it does not exist
/// (URL mode registers it later, and a missing one is not worth failing for).
pub async fn installation_owner(
    client: &kube::Client,
    webhook_config: &str,
) -> Option<OwnerReference> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    match api.get_opt(webhook_config).await {
        Ok(Some(c)) => Some(OwnerReference {
            api_version: "admissionregistration.k8s.io/v1".into(),
            kind: "MutatingWebhookConfiguration".into(),
            name: webhook_config.into(),
            uid: c.metadata.uid?,
            ..Default::default()
        }),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, webhook_config, "cannot read the webhook configuration; the Secret and Lease will not be garbage-collected on uninstall");
            None
        }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn material(secret: &Secret) -> Material {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

fn secret_data(m: &Material) -> std::collections::BTreeMap<String, ByteString> {
    m.iter()
        .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

/// One pass of the leader's certificate work: the Secret, then `caBundle`. Returns the bundle.
pub async fn reconcile_certs(client: &kube::Client, cfg: &CertConfig) -> Result<String, CertError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let names = cfg.endpoint.names();
    let current = secrets.get_opt(&cfg.secret).await?;
    let data = match current {
        None => {
            let m = tls::next(None, &names, now(), &cfg.lifetimes)?.expect("fresh material");
            let s = Secret {
                metadata: ObjectMeta {
                    name: Some(cfg.secret.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    labels: Some([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into()),
                    owner_references: cfg.owner.clone().map(|o| vec![o]),
                    ..Default::default()
                },
                data: Some(secret_data(&m)),
                type_: Some("Opaque".into()),
                ..Default::default()
            };
            match secrets.create(&PostParams::default(), &s).await {
                Ok(_) => {
                    tracing::info!(secret = %cfg.secret, "created the webhook CA and serving certificate");
                    m
                }
                // Another replica won the race: use what it wrote.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    material(&secrets.get(&cfg.secret).await?)
                }
                Err(e) => return Err(e.into()),
            }
        }
        Some(mut s) => {
            let m = material(&s);
            match tls::next(Some(&m), &names, now(), &cfg.lifetimes)? {
                None => m,
                Some(new) => {
                    s.data = Some(secret_data(&new));
                    s.string_data = None;
                    secrets
                        .replace(&cfg.secret, &PostParams::default(), &s)
                        .await?;
                    tracing::info!(secret = %cfg.secret, "rotated webhook certificate material");
                    new
                }
            }
        }
    };
    let bundle = data.get(tls::CA_BUNDLE).cloned().unwrap_or_default();
    publish_bundle(client, cfg, &bundle).await?;
    Ok(bundle)
}

/// Puts `bundle` into every webhook's `caBundle`. With a URL endpoint the configurations are
/// applied whole; otherwise (the chart owns them) only drifted `caBundle` fields are patched.
async fn publish_bundle(
    client: &kube::Client,
    cfg: &CertConfig,
    bundle: &str,
) -> Result<(), CertError> {
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    if let Endpoint::Url(_) = cfg.endpoint {
        let pp = PatchParams::apply(MANAGER).force();
        let (m, v) =
            webhook_configurations(&cfg.webhook_config, &cfg.endpoint, bundle, &cfg.namespace);
        mutating
            .patch(&cfg.webhook_config, &pp, &Patch::Apply(&m))
            .await?;
        validating
            .patch(&cfg.webhook_config, &pp, &Patch::Apply(&v))
            .await?;
        return Ok(());
    }
    let hooks_m = |c: MutatingWebhookConfiguration| {
        let hooks = c.webhooks.unwrap_or_default();
        hooks
            .into_iter()
            .map(|w| (w.name, w.client_config.ca_bundle))
            .collect()
    };
    let hooks_v = |c: ValidatingWebhookConfiguration| {
        let hooks = c.webhooks.unwrap_or_default();
        hooks
            .into_iter()
            .map(|w| (w.name, w.client_config.ca_bundle))
            .collect()
    };
    if !repatch(&mutating, &cfg.webhook_config, bundle, hooks_m).await? {
        tracing::warn!(config = %cfg.webhook_config, "MutatingWebhookConfiguration not found; pods are not being injected");
    }
    if !repatch(&validating, &cfg.webhook_config, bundle, hooks_v).await? {
        tracing::warn!(config = %cfg.webhook_config, "ValidatingWebhookConfiguration not found; McpPolicies are not being validated");
    }
    Ok(())
}

/// The JSON patch that sets `caBundle` on every webhook whose bundle differs from `bundle`
/// (each guarded by a test of the webhook's name, so a concurrent reorder fails the patch
/// instead of writing the wrong entry); `None` when nothing drifted.
pub fn ca_bundle_patch(
    hooks: &[(String, Option<ByteString>)],
    bundle: &str,
) -> Option<json_patch::Patch> {
    let want = base64::engine::general_purpose::STANDARD.encode(bundle);
    let mut ops = Vec::new();
    for (i, (name, ca)) in hooks.iter().enumerate() {
        if ca.as_ref().map(|b| b.0.as_slice()) != Some(bundle.as_bytes()) {
            ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": name}));
            ops.push(serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": want}));
        }
    }
    (!ops.is_empty())
        .then(|| serde_json::from_value(serde_json::Value::Array(ops)).expect("valid patch"))
}

/// Re-patches drifted `caBundle`s of one webhook configuration; false when it does not exist.
async fn repatch<K>(
    api: &Api<K>,
    name: &str,
    bundle: &str,
    hooks: impl Fn(K) -> Vec<(String, Option<ByteString>)>,
) -> Result<bool, CertError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(config) = api.get_opt(name).await? else {
        return Ok(false);
    };
    if let Some(p) = ca_bundle_patch(&hooks(config), bundle) {
        api.patch(name, &PatchParams::default(), &Patch::<()>::Json(p))
            .await?;
        tracing::info!(config = %name, "patched a drifted caBundle");
    }
    Ok(true)
}

/// Every replica: loads the serving certificate from the Secret when it changes, and exports
/// its expiry.
pub async fn load_serving_cert(
    client: &kube::Client,
    namespace: &str,
    secret: &str,
    slot: &Arc<CertSlot>,
    last: &mut Option<String>,
    metrics: &ControllerMetrics,
) -> Result<(), CertError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let Some(s) = secrets.get_opt(secret).await? else {
        return Ok(());
    };
    let m = material(&s);
    let crt = m.get(tls::TLS_CERT).cloned().unwrap_or_default();
    if last.as_deref() == Some(crt.as_str()) {
        return Ok(());
    }
    let key = tls::certified_key(&m)?;
    let info = tls::info(tls::TLS_CERT, &crt)?;
    slot.set(key);
    metrics
        .cert_expiry
        .with_label_values(&[] as &[&str])
        .set(info.not_after as f64);
    tracing::info!(not_after = info.not_after, "serving certificate loaded");
    *last = Some(crt);
    Ok(())
}
