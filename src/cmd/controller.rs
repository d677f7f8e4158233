//! `mcp-warden controller`: the operator's flags, and running it until SIGTERM.

use anyhow::{bail, Context};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// The controller's own namespace (its Lease and certificate Secret live there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "mcp-warden")]
    pub namespace: String,
    /// This replica's identity in leader election (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Where the HTTPS webhooks are served (`/mutate`, `/validate`).
    #[arg(
        long,
        env = "MCP_WARDEN_WEBHOOK_LISTEN",
        default_value = "0.0.0.0:9443"
    )]
    pub webhook_listen: std::net::SocketAddr,
    /// Where /metrics, /livez and /readyz are served (plain HTTP).
    #[arg(long, env = "MCP_WARDEN_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: std::net::SocketAddr,
    /// The Service in front of the webhooks (its DNS names go into the serving certificate).
    #[arg(
        long,
        env = "MCP_WARDEN_WEBHOOK_SERVICE",
        default_value = "mcp-warden-webhook"
    )]
    pub webhook_service: String,
    /// The webhook Service's port.
    #[arg(long, env = "MCP_WARDEN_WEBHOOK_SERVICE_PORT", default_value_t = 443)]
    pub webhook_service_port: i32,
    /// Register the webhooks at this URL (https://HOST:PORT) instead of the Service, and serve
    /// on PORT: for running outside the cluster. The controller then applies the webhook
    /// configurations itself.
    #[arg(long, env = "MCP_WARDEN_WEBHOOK_URL", value_name = "URL")]
    pub webhook_url: Option<String>,
    /// Name of the MutatingWebhookConfiguration and ValidatingWebhookConfiguration.
    #[arg(long, env = "MCP_WARDEN_WEBHOOK_CONFIG", default_value = "mcp-warden")]
    pub webhook_config: String,
    /// The Secret holding the webhook CA and serving certificate.
    #[arg(
        long,
        env = "MCP_WARDEN_TLS_SECRET",
        default_value = "mcp-warden-webhook-tls"
    )]
    pub tls_secret: String,
    /// Create, rotate and publish the webhook certificate (false when cert-manager issues it
    /// into the same Secret and injects caBundle).
    #[arg(long, env = "MCP_WARDEN_MANAGE_CERTIFICATES", default_value_t = true, action = clap::ArgAction::Set)]
    pub manage_certificates: bool,
    /// Days the webhook CA is valid (rotated with a third left).
    #[arg(long, env = "MCP_WARDEN_CA_VALIDITY_DAYS", default_value_t = 1825)]
    pub ca_validity_days: u64,
    /// Days a serving certificate is valid (reissued with a third left).
    #[arg(long, env = "MCP_WARDEN_CERT_VALIDITY_DAYS", default_value_t = 365)]
    pub cert_validity_days: u64,
    /// Seconds the webhook CA is valid, overriding --ca-validity-days (short lifetimes, to see
    /// rotation happen in a test cluster).
    #[arg(long, env = "MCP_WARDEN_CA_VALIDITY_SECONDS", value_name = "SECONDS")]
    pub ca_validity_seconds: Option<u64>,
    /// Seconds a serving certificate is valid, overriding --cert-validity-days.
    #[arg(long, env = "MCP_WARDEN_CERT_VALIDITY_SECONDS", value_name = "SECONDS")]
    pub cert_validity_seconds: Option<u64>,
    /// Seconds a new CA is trusted in caBundle before certificates are issued from it.
    #[arg(long, env = "MCP_WARDEN_CA_OVERLAP_SECONDS", default_value_t = 3600)]
    pub ca_overlap_seconds: u64,
    /// Seconds between certificate checks (reload on every replica, Secret and caBundle on the leader).
    #[arg(long, env = "MCP_WARDEN_CERT_INTERVAL_SECONDS", default_value_t = 30)]
    pub cert_interval_seconds: u64,
    /// Seconds between fetches of the key sets sidecars verify tokens with (the cluster's
    /// ServiceAccount keys, an OIDC issuer's `jwksFrom`); a failed fetch is retried after 30 s.
    #[arg(long, env = "MCP_WARDEN_JWKS_REFRESH_SECONDS", default_value_t = 300)]
    pub jwks_refresh_seconds: u64,
    /// The controller's ServiceAccount (the downward API's `spec.serviceAccountName`): the one
    /// subject sidecars' admin APIs accept.
    #[arg(long, env = "SERVICE_ACCOUNT_NAME", default_value = "mcp-warden")]
    pub service_account: String,
    /// A token of that ServiceAccount for audience `mcp-warden-admin` (a projected volume the
    /// kubelet refreshes), sent to sidecars' admin APIs; read before every poll.
    #[arg(
        long,
        env = "MCP_WARDEN_ADMIN_TOKEN_FILE",
        default_value = "/var/run/secrets/mcp-warden/admin/token"
    )]
    pub admin_token_file: PathBuf,
    /// Seconds between polls of the admin APIs of injected pods whose policy has approval rules.
    #[arg(long, env = "MCP_WARDEN_APPROVALS_POLL_SECONDS", default_value_t = 5.0)]
    pub approvals_poll_seconds: f64,
    /// Seconds between reads of injected pods' tool lists (`GET /tools`) into McpPolicy status.
    #[arg(long, env = "MCP_WARDEN_TOOLS_POLL_SECONDS", default_value_t = 30.0)]
    pub tools_poll_seconds: f64,
    /// Seconds a decided, used or expired McpApproval is kept before it is deleted.
    #[arg(
        long,
        env = "MCP_WARDEN_APPROVAL_RETENTION_SECONDS",
        default_value_t = 86_400
    )]
    pub approval_retention_seconds: u64,
    /// The leader-election Lease.
    #[arg(
        long,
        env = "MCP_WARDEN_LEASE_NAME",
        default_value = "mcp-warden-leader"
    )]
    pub lease_name: String,
    /// Seconds a leader may go without renewing before another replica takes over.
    #[arg(long, env = "MCP_WARDEN_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// The sidecar image injected into pods.
    #[arg(long, env = "MCP_WARDEN_SIDECAR_IMAGE", default_value = concat!("ghcr.io/mcp-warden/mcp-warden:", env!("CARGO_PKG_VERSION")))]
    pub sidecar_image: String,
    /// The sidecar's imagePullPolicy (empty: the cluster default).
    #[arg(long, env = "MCP_WARDEN_SIDECAR_IMAGE_PULL_POLICY", default_value = "")]
    pub sidecar_image_pull_policy: String,
    /// The sidecar's port agents connect to (the pod's `mcp` port).
    #[arg(long, env = "MCP_WARDEN_SIDECAR_PORT", default_value_t = 9480)]
    pub sidecar_port: u16,
    /// The sidecar's /metrics, /livez, /readyz port.
    #[arg(long, env = "MCP_WARDEN_SIDECAR_ADMIN_PORT", default_value_t = 9481)]
    pub sidecar_admin_port: u16,
    /// Sidecar CPU request (a Kubernetes quantity; empty for none).
    #[arg(long, env = "MCP_WARDEN_SIDECAR_CPU_REQUEST", default_value = "20m")]
    pub sidecar_cpu_request: String,
    /// Sidecar memory request.
    #[arg(
        long,
        env = "MCP_WARDEN_SIDECAR_MEMORY_REQUEST",
        default_value = "32Mi"
    )]
    pub sidecar_memory_request: String,
    /// Sidecar CPU limit (empty for none).
    #[arg(long, env = "MCP_WARDEN_SIDECAR_CPU_LIMIT", default_value = "")]
    pub sidecar_cpu_limit: String,
    /// Sidecar memory limit.
    #[arg(long, env = "MCP_WARDEN_SIDECAR_MEMORY_LIMIT", default_value = "64Mi")]
    pub sidecar_memory_limit: String,
    /// The numeric user the sidecar runs as.
    #[arg(long, env = "MCP_WARDEN_SIDECAR_RUN_AS_USER", default_value_t = 65532)]
    pub sidecar_run_as_user: i64,
    /// Inject a native sidecar (init container with restartPolicy Always): true, false, or auto
    /// (when the API server and every kubelet are 1.32 or newer).
    #[arg(long, env = "MCP_WARDEN_NATIVE_SIDECAR", default_value = "auto")]
    pub native_sidecar: crate::controller::NativeSidecar,
    /// Seconds to report not ready before stopping, after SIGTERM.
    #[arg(long, env = "MCP_WARDEN_DRAIN_DELAY_SECONDS", default_value_t = 5.0)]
    pub drain_delay_seconds: f64,
}

impl ControllerArgs {
    pub fn config(&self) -> anyhow::Result<crate::controller::Config> {
        use crate::controller::certs::CertConfig;
        use std::time::Duration;
        let (endpoint, webhook_listen) = self.endpoint()?;
        let day = |d: u64| Duration::from_secs(d.max(1) * 86_400);
        Ok(crate::controller::Config {
            namespace: self.namespace.clone(),
            identity: self.identity(),
            webhook_listen,
            admin_listen: self.admin_listen,
            certs: CertConfig {
                namespace: self.namespace.clone(),
                secret: self.tls_secret.clone(),
                webhook_config: self.webhook_config.clone(),
                endpoint,
                lifetimes: crate::webhook::tls::Lifetimes {
                    ca: self
                        .ca_validity_seconds
                        .map_or_else(|| day(self.ca_validity_days), Duration::from_secs),
                    serving: self
                        .cert_validity_seconds
                        .map_or_else(|| day(self.cert_validity_days), Duration::from_secs),
                    overlap: Duration::from_secs(self.ca_overlap_seconds),
                },
                owner: None,
            },
            lease_name: self.lease_name.clone(),
            lease_duration: Duration::from_secs(self.lease_duration_seconds.max(1)),
            inject: self.inject(),
            native_sidecar: self.native_sidecar,
            drain_delay: super::seconds("drain-delay-seconds", self.drain_delay_seconds)?,
            cert_interval: Duration::from_secs(self.cert_interval_seconds.max(1)),
            manage_certificates: self.manage_certificates,
            jwks_refresh: Duration::from_secs(self.jwks_refresh_seconds.max(1)),
            approvals: self.approvals()?,
        })
    }

    /// Where the API server calls the webhooks, and where they are served.
    fn endpoint(
        &self,
    ) -> anyhow::Result<(crate::cluster::webhooks::Endpoint, std::net::SocketAddr)> {
        use crate::cluster::webhooks::Endpoint;
        let mut listen = self.webhook_listen;
        let endpoint = match &self.webhook_url {
            Some(url) => {
                let uri: http::Uri = url.parse().context("--webhook-url is not a URL")?;
                if uri.scheme_str() != Some("https") || uri.host().is_none() {
                    bail!("--webhook-url must look like https://HOST:PORT");
                }
                listen.set_port(uri.port_u16().unwrap_or(443));
                Endpoint::Url(url.trim_end_matches('/').to_string())
            }
            None => Endpoint::Service {
                namespace: self.namespace.clone(),
                name: self.webhook_service.clone(),
                port: self.webhook_service_port,
            },
        };
        Ok((endpoint, listen))
    }

    /// This replica's name in leader election: the flag, else the host name.
    fn identity(&self) -> String {
        match &self.identity {
            Some(i) if !i.is_empty() => i.clone(),
            _ => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| format!("mcp-warden-{}", std::process::id())),
        }
    }

    /// The sidecar container injected into pods.
    fn inject(&self) -> crate::cluster::InjectConfig {
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let quantities = |pairs: [(&str, &String); 2]| {
            let m: std::collections::BTreeMap<String, Quantity> = pairs
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_string(), Quantity(v.clone())))
                .collect();
            (!m.is_empty()).then_some(m)
        };
        let mut inject = crate::cluster::InjectConfig::new(
            self.sidecar_image.clone(),
            env!("CARGO_PKG_VERSION"),
        );
        inject.image_pull_policy =
            Some(self.sidecar_image_pull_policy.clone()).filter(|s| !s.is_empty());
        inject.proxy_port = self.sidecar_port;
        inject.admin_port = self.sidecar_admin_port;
        inject.run_as_user = self.sidecar_run_as_user;
        inject.resources.requests = quantities([
            ("cpu", &self.sidecar_cpu_request),
            ("memory", &self.sidecar_memory_request),
        ]);
        inject.resources.limits = quantities([
            ("cpu", &self.sidecar_cpu_limit),
            ("memory", &self.sidecar_memory_limit),
        ]);
        inject
    }

    /// The approval and tool loops: who sidecars' admin APIs accept, and how often they are read.
    fn approvals(&self) -> anyhow::Result<crate::controller::approvals::ApprovalsConfig> {
        use super::positive_seconds as positive;
        use std::time::Duration;
        Ok(crate::controller::approvals::ApprovalsConfig {
            subject: format!(
                "system:serviceaccount:{}:{}",
                self.namespace, self.service_account
            ),
            token_file: self.admin_token_file.clone(),
            poll: positive("approvals-poll-seconds", self.approvals_poll_seconds)?,
            tools_poll: positive("tools-poll-seconds", self.tools_poll_seconds)?,
            retention: Duration::from_secs(self.approval_retention_seconds),
        })
    }
}

/// Runs the controller until SIGTERM.
pub fn run(a: &ControllerArgs) -> anyhow::Result<bool> {
    let cfg = a.config()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(crate::controller::run(cfg, crate::serve::shutdown_signal()))?;
    Ok(true)
}
