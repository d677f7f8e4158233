//! Approvals in a cluster, on the leader: every poll interval, for each McpPolicy with approval
//! rules,
//!
//! 1. read `GET /approvals` from the admin API of each injected pod of the policy (with a token
//!    of the controller's ServiceAccount for audience `mcp-warden-admin`);
//! 2. create an McpApproval for each pending request not yet known (Event `Requested`);
//! 3. move each McpApproval's `status` on — Pending → Approved | Denied | Expired, Approved →
//!    Used | Expired — from its decision, its times and the uses its sidecar reports (an Event
//!    and an audit line per change), and delete final ones after the retention;
//! 4. render the live approvals (approved, unexpired, uses left, and matching what was asked)
//!    into the policy's ConfigMap under `approvals.json`, with a field manager of their own, so
//!    the reconciler's writes and these never undo each other.
//!
//! What is decided is computed by the pure functions [`next_status`], [`new_approval`] and
//! [`live`]; this module's loop only reads and writes.

use crate::approval::{approval_id, ApprovalsFile, Granted, Pending, Report};
use crate::cluster::{
    configmap_name, sidecar_state, Carried, APPROVALS_KEY, APPROVALS_MANAGER, MANAGED_BY,
    POLICY_ANNOTATION, POLICY_LABEL,
};
use crate::crd::approval::{
    approval_name, ApprovalDecision, ApprovalPhase, McpApproval, McpApprovalSpec, McpApprovalStatus,
};
use crate::crd::McpPolicy;
use crate::policy::sha256_hex;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

/// How the leader keeps approvals.
#[derive(Debug, Clone)]
pub struct ApprovalsConfig {
    /// The controller's ServiceAccount, `system:serviceaccount:NS:NAME`.
    pub subject: String,
    /// Its token for audience `mcp-warden-admin`.
    pub token_file: PathBuf,
    pub poll: Duration,
    /// How often the sidecars' tool lists are read into McpPolicy status.
    pub tools_poll: Duration,
    /// How long final McpApprovals are kept.
    pub retention: Duration,
}

/// Time one admin API read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest admin API answer read (256 pending requests of 16 KiB arguments fit).
const MAX_REPORT: usize = 8 << 20;

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Empty<Bytes>,
>;

/// The seconds-since-epoch form the sidecar uses, as a Kubernetes time.
fn time(secs: u64) -> Time {
    Time(Timestamp::from_second(secs.min(i64::MAX as u64) as i64).unwrap_or(Timestamp::MAX))
}

fn secs(t: &Time) -> u64 {
    t.0.as_second().max(0) as u64
}

/// A sidecar's pending request made an McpApproval (`None` when one of its name exists
/// already), with the audit line of the request.
async fn request(
    api: &Api<McpApproval>,
    policy: &McpPolicy,
    pod: &str,
    p: &Pending,
) -> Result<Option<McpApproval>, kube::Error> {
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let a = new_approval(&ns, &name, pod, p);
    match api.create(&PostParams::default(), &a).await {
        Ok(created) => {
            tracing::info!(
                target: "mcp_warden::audit",
                approval = %created.name_any(),
                namespace = %ns,
                policy = %format!("{ns}/{name}"),
                tool = %p.tool,
                identity = %p.identity,
                pod = %pod,
                approval_id = %p.id,
                "approval requested"
            );
            Ok(Some(created))
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
}

/// The McpApproval for a pending request the sidecar of `pod` reported, for policy `policy` in
/// namespace `ns`.
pub fn new_approval(ns: &str, policy: &str, pod: &str, p: &Pending) -> McpApproval {
    // The name tells this request from an earlier one of the same call (approved and used).
    let key = sha256_hex(format!("{}:{pod}:{}", p.id, p.requested_at).as_bytes());
    let mut a = McpApproval::new(
        &approval_name(&p.tool, &key),
        McpApprovalSpec {
            policy: policy.to_owned(),
            tool: p.tool.clone(),
            arguments: p.arguments.clone(),
            arguments_hash: p.arguments_sha256.clone(),
            identity: p.identity.clone(),
            pod: pod.to_owned(),
            approval_id: p.id.clone(),
            requested_at: time(p.requested_at),
            expires_at: time(p.expires_at()),
            uses: p.uses.max(1),
            ttl_seconds: p.ttl_seconds.max(1),
            decision: None,
            decided_by: None,
            decided_at: None,
        },
    );
    a.metadata.namespace = Some(ns.to_owned());
    a.metadata.labels = Some(
        [
            (POLICY_LABEL.to_owned(), policy.to_owned()),
            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        ]
        .into(),
    );
    a
}

/// Why an McpApproval cannot be honoured whatever its decision: it does not describe the call
/// its id stands for (only the controller writes these fields, and the webhook keeps them; this
/// holds even against an object written around both).
pub fn mismatch(ns: &str, spec: &McpApprovalSpec) -> Option<String> {
    let label = format!("{ns}/{}", spec.policy);
    if approval_id(&label, &spec.tool, &spec.arguments_hash, &spec.identity) != spec.approval_id {
        return Some(
            "approvalId does not match the policy, tool, argumentsHash and identity".into(),
        );
    }
    if let Some(a) = &spec.arguments {
        if sha256_hex(a.as_bytes()) != spec.arguments_hash {
            return Some("argumentsHash does not match the arguments".into());
        }
    }
    None
}

/// The uses of one approval the sidecars report: how many, and on which pods.
#[derive(Debug, Default, Clone)]
pub struct Uses {
    pub used: u32,
    pub on: Vec<String>,
}

/// Where an approval's uses ran, as its status says: the pods named before and now, each once,
/// sorted, at most 16.
pub fn where_used(before: &[String], reported: &[String]) -> Vec<String> {
    let mut all: Vec<String> = before.iter().chain(reported).cloned().collect();
    all.sort();
    all.dedup();
    all.truncate(16);
    all
}

/// A status change worth an Event (recorded on the McpApproval).
pub type Change = super::events::PolicyEvent;

/// The status `a` should have at `now` (seconds), given the uses its sidecar reports spent, and
/// the Event when the phase changes.
pub fn next_status(
    ns: &str,
    a: &McpApproval,
    reported_used: Option<u32>,
    now: u64,
) -> (McpApprovalStatus, Option<Change>) {
    let old = a.status.clone().unwrap_or_default();
    let s = &a.spec;
    let used = old.used.max(reported_used.unwrap_or(0));
    let approval_expires = s
        .decided_at
        .as_ref()
        .filter(|_| s.decision == Some(ApprovalDecision::Approved))
        .map(|t| secs(t).saturating_add(s.ttl_seconds));
    let bad = mismatch(ns, s);
    let phase = phase(s, used, approval_expires, bad.is_some(), now);
    let message = status_message(ns, a, phase, used, approval_expires, bad.as_deref(), now);
    let finished_at = match (phase.is_final(), &old.finished_at) {
        (true, Some(t)) => Some(t.clone()),
        (true, None) => Some(time(now)),
        (false, _) => None,
    };
    let change = (old.phase != Some(phase)).then(|| phase_event(s, phase, message.clone()));
    let status = McpApprovalStatus {
        phase: Some(phase),
        used,
        used_on: old.used_on.clone(),
        approval_expires_at: approval_expires.map(time),
        finished_at,
        message: Some(message),
    };
    (status, change)
}

/// Where an approval stands: its decision, its uses, its ttl (`approval_expires`, when
/// approved) and the request's `expiresAt`, at `now`.
fn phase(
    s: &McpApprovalSpec,
    used: u32,
    approval_expires: Option<u64>,
    mismatched: bool,
    now: u64,
) -> ApprovalPhase {
    match (s.decision, approval_expires) {
        (Some(ApprovalDecision::Denied), _) => ApprovalPhase::Denied,
        (Some(ApprovalDecision::Approved), _) if mismatched => ApprovalPhase::Denied,
        (Some(ApprovalDecision::Approved), _) if used >= s.uses => ApprovalPhase::Used,
        // Decided after the request had lapsed: the agent must ask again.
        (Some(ApprovalDecision::Approved), _)
            if s.decided_at
                .as_ref()
                .is_some_and(|d| secs(d) > secs(&s.expires_at)) =>
        {
            ApprovalPhase::Expired
        }
        (Some(ApprovalDecision::Approved), Some(until)) if now > until => ApprovalPhase::Expired,
        (Some(ApprovalDecision::Approved), _) => ApprovalPhase::Approved,
        (None, _) if now > secs(&s.expires_at) => ApprovalPhase::Expired,
        (None, _) => ApprovalPhase::Pending,
    }
}

/// The status message a person reads for `phase`.
fn status_message(
    ns: &str,
    a: &McpApproval,
    phase: ApprovalPhase,
    used: u32,
    approval_expires: Option<u64>,
    mismatch: Option<&str>,
    now: u64,
) -> String {
    let s = &a.spec;
    let by = s.decided_by.as_deref().unwrap_or("someone");
    match phase {
        ApprovalPhase::Pending => format!(
            "waiting for a decision: kubectl mcp-warden approve {} -n {ns}",
            a.name_any()
        ),
        ApprovalPhase::Approved => format!(
            "approved by {by}: {} of {} uses left",
            s.uses - used.min(s.uses),
            s.uses
        ),
        ApprovalPhase::Denied => match mismatch {
            Some(why) => format!("not honoured: {why}"),
            None => format!("denied by {by}"),
        },
        ApprovalPhase::Used => format!("approved by {by}; all {} uses spent", s.uses),
        ApprovalPhase::Expired if s.decision.is_none() => {
            "nobody decided before expiresAt".to_owned()
        }
        ApprovalPhase::Expired if used == 0 && approval_expires.is_some_and(|u| now <= u) => {
            format!("approved by {by} after the request had lapsed (expiresAt); the agent must ask again")
        }
        ApprovalPhase::Expired => format!(
            "approved by {by}; {} of {} uses spent before the ttl ended",
            used, s.uses
        ),
    }
}

/// The Event recorded when an approval enters `phase`.
fn phase_event(s: &McpApprovalSpec, phase: ApprovalPhase, message: String) -> Change {
    Change {
        warning: matches!(phase, ApprovalPhase::Denied | ApprovalPhase::Expired),
        reason: match phase {
            ApprovalPhase::Pending => "Requested",
            ApprovalPhase::Approved => "Approved",
            ApprovalPhase::Denied => "Denied",
            ApprovalPhase::Used => "Used",
            ApprovalPhase::Expired => "Expired",
        },
        note: match phase {
            ApprovalPhase::Pending => format!(
                "{} asked to call {} on pod {}: {}",
                s.identity, s.tool, s.pod, message
            ),
            _ => message,
        },
    }
}

/// The approvals file for a policy's sidecars: its approvals whose phase is Approved.
pub fn live(approvals: &[McpApproval]) -> ApprovalsFile {
    let mut out: Vec<Granted> = approvals
        .iter()
        .filter(|a| a.status.as_ref().and_then(|s| s.phase) == Some(ApprovalPhase::Approved))
        .filter_map(|a| {
            let until = a.status.as_ref()?.approval_expires_at.as_ref()?;
            Some(Granted {
                id: a.spec.approval_id.clone(),
                uses: a.spec.uses,
                expires_at: secs(until),
                pod: Some(a.spec.pod.clone()),
                name: Some(a.name_any()),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    ApprovalsFile { approvals: out }
}

/// Whether a final McpApproval has been kept long enough.
pub fn expired_retention(a: &McpApproval, retention: Duration, now: u64) -> bool {
    a.status
        .as_ref()
        .filter(|s| s.phase.is_some_and(ApprovalPhase::is_final))
        .and_then(|s| s.finished_at.as_ref())
        .is_some_and(|t| now.saturating_sub(secs(t)) >= retention.as_secs())
}

/// Aborts a task when dropped (the keeper's watch ends with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The loop's state across polls.
pub struct Keeper {
    pub(super) client: kube::Client,
    cfg: ApprovalsConfig,
    policies: Store<McpPolicy>,
    pods: Store<Pod>,
    /// The sidecar this controller injects: only pods carrying exactly it are sent the token.
    inject: crate::cluster::InjectConfig,
    pub(super) recorder: Recorder,
    http: HttpClient,
    /// The approvals text last written per ConfigMap (namespace/name).
    written: HashMap<String, String>,
    token_error: Option<String>,
}

impl Keeper {
    pub fn new(
        client: kube::Client,
        cfg: ApprovalsConfig,
        policies: Store<McpPolicy>,
        pods: Store<Pod>,
        inject: crate::cluster::InjectConfig,
        recorder: Recorder,
    ) -> Keeper {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        Keeper {
            client,
            cfg,
            policies,
            pods,
            inject,
            recorder,
            http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector),
            written: HashMap::new(),
            token_error: None,
        }
    }

    /// Polls until the task is aborted (when leadership ends): every poll interval, and at once
    /// when an McpApproval changes (a person's decision reaches sidecars without waiting).
    pub async fn run(mut self) {
        use futures_util::StreamExt;
        use kube::runtime::{watcher, WatchStreamExt};
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let changes = {
            let wake = wake.clone();
            watcher(
                Api::<McpApproval>::all(self.client.clone()),
                watcher::Config::default(),
            )
            .default_backoff()
            .touched_objects()
            .for_each(move |_| {
                wake.notify_one();
                std::future::ready(())
            })
        };
        let _changes = AbortOnDrop(tokio::spawn(changes));
        let mut tools_read: Option<std::time::Instant> = None;
        loop {
            let policies = self.policies.state();
            let read_tools = tools_read.is_none_or(|t| t.elapsed() >= self.cfg.tools_poll);
            if read_tools {
                tools_read = Some(std::time::Instant::now());
            }
            for p in policies {
                let at = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
                if p.spec.has_approvals() {
                    if let Err(e) = self.policy(&p).await {
                        tracing::warn!(policy = %at, error = %e, "approval work failed; retrying next poll");
                    }
                }
                // An invalid policy keeps its last render; its tools status waits for a valid one.
                if let (true, Ok(compiled)) = (read_tools, p.spec.compile()) {
                    if let Err(e) = self.tools(&p, &compiled).await {
                        tracing::warn!(policy = %at, error = %e, "reading the sidecars' tools failed; retrying next poll");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.poll.min(self.cfg.tools_poll)) => {}
                _ = wake.notified() => {}
            }
        }
    }

    pub(super) fn token(&mut self) -> Option<String> {
        match std::fs::read_to_string(&self.cfg.token_file) {
            Ok(t) if !t.trim().is_empty() => {
                self.token_error = None;
                Some(t.trim().to_owned())
            }
            r => {
                let why = match r {
                    Ok(_) => "empty".to_owned(),
                    Err(e) => e.to_string(),
                };
                if self.token_error.as_deref() != Some(why.as_str()) {
                    tracing::error!(
                        file = %self.cfg.token_file.display(),
                        %why,
                        "no admin token: sidecars' approval requests cannot be read"
                    );
                    self.token_error = Some(why);
                }
                None
            }
        }
    }

    /// One admin API read: the JSON at `path` on the pod's admin port.
    pub(super) async fn admin_get(
        &self,
        ip: &str,
        token: &str,
        path: &str,
    ) -> Result<serde_json::Value, String> {
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.to_owned()
        };
        let req = http::Request::get(format!("http://{host}:{}{path}", self.inject.admin_port))
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let read = async {
            let res = self.http.request(req).await.map_err(|e| e.to_string())?;
            let status = res.status();
            let body = Limited::new(res.into_body(), MAX_REPORT)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if !status.is_success() {
                return Err(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                ));
            }
            serde_json::from_slice(&body).map_err(|e| e.to_string())
        };
        tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .unwrap_or_else(|_| Err("no answer in time".into()))
    }

    /// The policy's pods that carry exactly the sidecar this controller injects for it, with
    /// their IPs: the only ones sent the admin token (not a pod that merely claims the policy's
    /// annotation). Oldest first: the first of them to list a tool names its first-seen
    /// definition.
    pub(super) fn pods_of(&self, policy: &McpPolicy) -> Vec<(String, String)> {
        let ns = policy.namespace().unwrap_or_default();
        let label = format!("{ns}/{}", policy.name_any());
        let mut pods = self.pods.state();
        pods.sort_by(|a, b| {
            let created = |p: &Pod| p.metadata.creation_timestamp.clone().map(|t| t.0);
            created(a)
                .cmp(&created(b))
                .then_with(|| a.name_any().cmp(&b.name_any()))
        });
        pods.iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
            .filter(|p| {
                p.annotations().get(POLICY_ANNOTATION).map(String::as_str) == Some(label.as_str())
                    && p.metadata.deletion_timestamp.is_none()
                    && sidecar_state(p, policy, Some(&self.inject)) == Carried::Ours
            })
            .filter_map(|p| Some((p.name_any(), p.status.as_ref()?.pod_ip.clone()?)))
            .collect()
    }

    /// One policy's approvals: what its sidecars report (uses spent, new requests), then each
    /// McpApproval's status, Events and retention, then the approvals its sidecars honour.
    async fn policy(&mut self, policy: &McpPolicy) -> Result<(), kube::Error> {
        let ns = policy.namespace().unwrap_or_default();
        let name = policy.name_any();
        let api: Api<McpApproval> = Api::namespaced(self.client.clone(), &ns);
        let mut known = api
            .list(&ListParams::default().labels(&format!("{POLICY_LABEL}={name}")))
            .await?
            .items;
        let used = self.collect(policy, &api, &mut known).await?;
        let now = Timestamp::now().as_second().max(0) as u64;
        let mut kept = Vec::with_capacity(known.len());
        for a in known {
            if let Some(a) = self.settle(&api, policy, a, &used, now).await? {
                kept.push(a);
            }
        }
        self.render(&ns, &name, &live(&kept)).await
    }

    /// Reads every sidecar's report: the uses spent per approval (returned), and requests not
    /// yet known, made McpApprovals (added to `known`).
    async fn collect(
        &mut self,
        policy: &McpPolicy,
        api: &Api<McpApproval>,
        known: &mut Vec<McpApproval>,
    ) -> Result<HashMap<String, Uses>, kube::Error> {
        let mut used: HashMap<String, Uses> = HashMap::new();
        let pods = self.pods_of(policy);
        if pods.is_empty() {
            return Ok(used);
        }
        let Some(token) = self.token() else {
            return Ok(used);
        };
        let ns = policy.namespace().unwrap_or_default();
        let label = format!("{ns}/{}", policy.name_any());
        for (pod, ip) in &pods {
            let report = match self
                .admin_get(ip, &token, "/approvals")
                .await
                .and_then(|v| serde_json::from_value::<Report>(v).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(why) => {
                    tracing::warn!(pod = %format!("{ns}/{pod}"), %why, "cannot read the sidecar's approvals");
                    continue;
                }
            };
            // Each use is counted by one sidecar (the pod's own, or the approval's owner among
            // the policy's sidecars): the uses are the sum over pods.
            for s in &report.used {
                if let Some(n) = &s.name {
                    let u = used.entry(n.clone()).or_default();
                    u.used = u.used.saturating_add(s.used);
                    u.on.extend(s.used_on.iter().cloned());
                }
            }
            for p in report.pending.iter().filter(|p| p.policy == label) {
                let seen = known.iter().any(|a| {
                    a.spec.approval_id == p.id
                        && a.spec.pod == *pod
                        && secs(&a.spec.requested_at) == p.requested_at
                });
                if !seen {
                    if let Some(created) = request(api, policy, pod, p).await? {
                        known.push(created);
                    }
                }
            }
        }
        Ok(used)
    }

    /// One McpApproval: deleted past its retention (`None`), else its status brought up to
    /// date, with an Event and an audit line when it was decided.
    async fn settle(
        &self,
        api: &Api<McpApproval>,
        policy: &McpPolicy,
        mut a: McpApproval,
        used: &HashMap<String, Uses>,
        now: u64,
    ) -> Result<Option<McpApproval>, kube::Error> {
        if expired_retention(&a, self.cfg.retention, now) {
            match api.delete(&a.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
            return Ok(None);
        }
        let ns = policy.namespace().unwrap_or_default();
        let reported = used.get(&a.name_any());
        let (mut status, change) = next_status(&ns, &a, reported.map(|u| u.used), now);
        if let Some(u) = reported {
            status.used_on = where_used(&status.used_on, &u.on);
        }
        if a.status.as_ref() == Some(&status) {
            return Ok(Some(a));
        }
        let body = json!({
            "apiVersion": "mcpwarden.dev/v1alpha1",
            "kind": "McpApproval",
            "status": status,
        });
        api.patch_status(
            &a.name_any(),
            &PatchParams::apply(APPROVALS_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        if let Some(c) = change {
            self.record(&a, &c).await;
            if matches!(c.reason, "Approved" | "Denied") {
                tracing::info!(
                    target: "mcp_warden::audit",
                    approval = %a.name_any(),
                    namespace = %ns,
                    policy = %format!("{ns}/{}", policy.name_any()),
                    tool = %a.spec.tool,
                    identity = %a.spec.identity,
                    approval_id = %a.spec.approval_id,
                    decision = c.reason,
                    decided_by = a.spec.decided_by.as_deref().unwrap_or_default(),
                    "approval decided"
                );
            }
        }
        a.status = Some(status);
        Ok(Some(a))
    }

    async fn record(&self, a: &McpApproval, c: &Change) {
        let ev = c.event_for("Approval");
        if let Err(e) = self.recorder.publish(&ev, &a.object_ref(&())).await {
            tracing::debug!(error = %e, "could not record an Event");
        }
    }

    async fn render(
        &mut self,
        ns: &str,
        policy: &str,
        file: &ApprovalsFile,
    ) -> Result<(), kube::Error> {
        let text = serde_json::to_string(file).expect("an approvals file serialises");
        let cm_name = configmap_name(policy);
        let key = format!("{ns}/{cm_name}");
        if self.written.get(&key) == Some(&text) {
            return Ok(());
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        // Only into the reconciler's ConfigMap: never create one without its owner.
        let Some(cm) = api.get_opt(&cm_name).await? else {
            return Ok(());
        };
        if cm.data.as_ref().and_then(|d| d.get(APPROVALS_KEY)) != Some(&text) {
            let body = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(cm_name.clone()),
                    namespace: Some(ns.to_owned()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(APPROVALS_KEY.to_owned(), text.clone())])),
                ..Default::default()
            };
            api.patch(
                &cm_name,
                &PatchParams::apply(APPROVALS_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await?;
        }
        self.written.insert(key, text);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approval::canonical;

    const NS: &str = "sandbox";

    fn pending(at: u64) -> Pending {
        let arguments = canonical(&json!({"session_id": "default"}));
        let arguments_sha256 = sha256_hex(arguments.as_bytes());
        let identity = "system:serviceaccount:agents:bot";
        Pending {
            id: approval_id(
                "sandbox/interp",
                "clear_session",
                &arguments_sha256,
                identity,
            ),
            policy: "sandbox/interp".into(),
            tool: "clear_session".into(),
            arguments: Some(arguments),
            arguments_sha256,
            identity: identity.into(),
            requested_at: at,
            uses: 2,
            ttl_seconds: 600,
            tool_label: "clear_session".into(),
        }
    }

    fn decided(a: &McpApproval, d: ApprovalDecision, at: u64) -> McpApproval {
        let mut a = a.clone();
        a.spec.decision = Some(d);
        a.spec.decided_by = Some("alice".into());
        a.spec.decided_at = Some(time(at));
        a
    }

    fn with_status(mut a: McpApproval, s: McpApprovalStatus) -> McpApproval {
        a.status = Some(s);
        a
    }

    #[test]
    fn a_request_becomes_an_mcpapproval_naming_the_call_and_the_pod() {
        let a = new_approval(NS, "interp", "interp-0", &pending(1_000));
        assert!(a.name_any().starts_with("clear-session-"));
        assert_eq!(a.spec.pod, "interp-0");
        assert_eq!(secs(&a.spec.expires_at), 1_600);
        assert_eq!(a.labels()[POLICY_LABEL], "interp");
        assert_eq!(mismatch(NS, &a.spec), None);
        // The same call asked again later is another request, with another name.
        assert_ne!(
            a.name_any(),
            new_approval(NS, "interp", "interp-0", &pending(2_000)).name_any()
        );
        let mut forged = a.spec.clone();
        forged.arguments = Some("{\"session_id\":\"all\"}".into());
        assert!(mismatch(NS, &forged).unwrap().contains("argumentsHash"));
        forged = a.spec.clone();
        forged.identity = "system:serviceaccount:agents:other".into();
        assert!(mismatch(NS, &forged).unwrap().contains("approvalId"));
    }

    #[test]
    fn phases_follow_the_decision_the_uses_and_the_clock() {
        let a = new_approval(NS, "interp", "interp-0", &pending(1_000));
        let (s, c) = next_status(NS, &a, None, 1_100);
        assert_eq!(s.phase, Some(ApprovalPhase::Pending));
        assert_eq!(c.unwrap().reason, "Requested");
        let a = with_status(a, s);
        assert_eq!(
            next_status(NS, &a, None, 1_200).1,
            None,
            "no change, no Event"
        );
        // Nobody decides in time.
        let (s, c) = next_status(NS, &a, None, 1_601);
        assert_eq!(s.phase, Some(ApprovalPhase::Expired));
        assert!(c.unwrap().warning);
        assert!(s.finished_at.is_some());

        // Approved at 1 200: live until 1 800, then used up.
        let ok = decided(&a, ApprovalDecision::Approved, 1_200);
        let (s, c) = next_status(NS, &ok, None, 1_700);
        assert_eq!(s.phase, Some(ApprovalPhase::Approved), "{s:?}");
        assert_eq!(c.unwrap().reason, "Approved");
        assert_eq!(secs(s.approval_expires_at.as_ref().unwrap()), 1_800);
        let ok = with_status(ok, s);
        let file = live(std::slice::from_ref(&ok));
        assert_eq!(file.approvals.len(), 1);
        assert_eq!(file.approvals[0].pod.as_deref(), Some("interp-0"));
        assert_eq!(file.approvals[0].expires_at, 1_800);
        assert_eq!(
            file.approvals[0].name.as_deref(),
            Some(ok.name_any().as_str())
        );
        let (s, _) = next_status(NS, &ok, Some(1), 1_700);
        assert_eq!((s.phase, s.used), (Some(ApprovalPhase::Approved), 1));
        let (s, c) = next_status(NS, &with_status(ok.clone(), s), Some(2), 1_700);
        assert_eq!(s.phase, Some(ApprovalPhase::Used));
        assert_eq!(c.unwrap().reason, "Used");
        assert!(live(&[with_status(ok.clone(), s.clone())])
            .approvals
            .is_empty());
        // A sidecar that restarted reports fewer uses: the count never goes back.
        let (s2, _) = next_status(NS, &with_status(ok.clone(), s), Some(0), 1_700);
        assert_eq!(s2.used, 2);
        // Approved after the request lapsed (undecided past expiresAt).
        assert_eq!(
            next_status(
                NS,
                &decided(&a, ApprovalDecision::Approved, 1_601),
                None,
                1_602
            )
            .0
            .phase,
            Some(ApprovalPhase::Expired)
        );
        // Approved but not used up within the ttl.
        assert_eq!(
            next_status(NS, &ok, Some(1), 1_801).0.phase,
            Some(ApprovalPhase::Expired)
        );
        // Denied.
        let no = decided(&a, ApprovalDecision::Denied, 1_200);
        assert_eq!(
            next_status(NS, &no, None, 1_300).0.phase,
            Some(ApprovalPhase::Denied)
        );
        // An approval that does not describe its call is never honoured.
        let mut forged = decided(&a, ApprovalDecision::Approved, 1_200);
        forged.spec.identity = "system:serviceaccount:agents:other".into();
        let (s, _) = next_status(NS, &forged, None, 1_300);
        assert_eq!(s.phase, Some(ApprovalPhase::Denied));
        assert!(live(&[with_status(forged, s)]).approvals.is_empty());
    }

    #[test]
    fn final_approvals_are_deleted_after_the_retention_only() {
        let a = new_approval(NS, "interp", "interp-0", &pending(1_000));
        let (s, _) = next_status(NS, &a, None, 2_000);
        let done = with_status(a.clone(), s);
        let keep = Duration::from_secs(3_600);
        assert!(!expired_retention(&done, keep, 2_000 + 3_599));
        assert!(expired_retention(&done, keep, 2_000 + 3_600));
        let (s, _) = next_status(NS, &a, None, 1_100);
        assert!(
            !expired_retention(&with_status(a, s), keep, 1_000_000),
            "pending stays"
        );
    }

    #[test]
    fn where_used_names_each_pod_once_in_order_and_keeps_what_was_named() {
        let before = vec!["web-2".to_owned()];
        let reported = ["web-0", "web-2", "web-0"].map(String::from);
        assert_eq!(where_used(&before, &reported), ["web-0", "web-2"]);
        let many: Vec<String> = (0..40).map(|i| format!("web-{i:02}")).collect();
        assert_eq!(where_used(&[], &many).len(), 16);
    }
}
