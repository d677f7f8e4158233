//! One McpPolicy reconciliation: compile and render → server-side-apply the ConfigMap (and the
//! NetworkPolicy under `isolation: NetworkPolicy`) → server-side-apply the status → Events.
//! What is written is computed by [`desired`]; this module only reads caches and writes.

use super::events::{clip, PolicyEvent, Warnings};
use super::render::{self, cond};
use crate::cluster::{
    configmap_name, in_namespace, selecting_policy, selector_matches, ADMIN_KEYS_KEY,
    APPROVALS_KEY, KEYS_KEY, MANAGER,
};
use crate::crd::{Isolation, McpPolicy, McpPolicyStatus};
use crate::metrics::ControllerMetrics;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a Ready policy is looked at again without any change.
pub const RESYNC: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the McpPolicy has no namespace")]
    NoNamespace,
    #[error("the Pod and Service caches are not filled yet (their watches have not listed since the controller started or lost the API server)")]
    CachesNotReady,
}

/// What a reconciliation reads: the client and the caches of the leader's watches.
pub struct Ctx {
    pub client: kube::Client,
    pub metrics: ControllerMetrics,
    pub recorder: Recorder,
    pub policies: Store<McpPolicy>,
    pub pods: Store<Pod>,
    pub services: Store<Service>,
    pub configmaps: Store<ConfigMap>,
    pub network_policies: Store<NetworkPolicy>,
    /// Policies (by uid) whose peer-key Secret exists: created once, never read back.
    pub peer_keys: Mutex<std::collections::HashSet<String>>,
    /// The controller's (and sidecar's) version, for `outdatedPods`.
    pub version: String,
    /// The sidecar's proxy and admin ports, opened by the NetworkPolicy.
    pub sidecar_ports: Vec<u16>,
    /// Consecutive failures per policy, for backoff.
    pub failures: Mutex<HashMap<ObjectRef<McpPolicy>, u32>>,
    /// The hash exported per policy in `policy_rendered_info`.
    pub exported: Mutex<HashMap<String, String>>,
    /// The key sets sidecars verify tokens with, by source.
    pub keys: super::keys::KeySets,
    /// The controller's own ServiceAccount (`system:serviceaccount:NS:NAME`): the one subject
    /// sidecars' admin APIs accept.
    pub admin_subject: String,
}

impl Ctx {
    /// Counts and warnings need the Pod and Service caches: waits for their first list, at
    /// most `wait` (then the reconcile fails and is retried with a warning, not held unseen).
    pub async fn caches_ready(&self, wait: std::time::Duration) -> Result<(), Error> {
        let filled = async {
            // An Err means the cache's writer is gone with the leader's work: nothing to wait for.
            let _ = self.pods.wait_until_ready().await;
            let _ = self.services.wait_until_ready().await;
        };
        tokio::time::timeout(wait, filled)
            .await
            .map_err(|_| Error::CachesNotReady)
    }
}

/// What the policy's status should be, and what to write besides.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub status: McpPolicyStatus,
    /// The render, when the policy is valid.
    pub configmap: Option<ConfigMap>,
    pub network_policy: Option<NetworkPolicy>,
    /// Events worth recording.
    pub events: Vec<PolicyEvent>,
}

/// What the reconciler read of a policy's namespace from the caches.
pub struct Seen<'a> {
    /// The namespace's McpPolicies that select any of `pods` (and the policy itself).
    pub policies: &'a [McpPolicy],
    /// The pods the policy selects.
    pub pods: &'a [Pod],
    pub services: &'a [Service],
    pub network_policies: &'a [NetworkPolicy],
    /// For a policy that verifies tokens: the key set as fetched (or why not), and as the
    /// policy's ConfigMap holds it now.
    pub keys: Option<SeenKeys<'a>>,
    /// For a policy with approval rules: the admin API's key file (the cluster's keys and the
    /// controller's subject), as fetched or, when the fetch failed, as rendered before.
    pub admin_keys: Option<&'a str>,
}

/// A policy's key set, fetched and as last rendered.
#[derive(Debug, Clone, Copy)]
pub struct SeenKeys<'a> {
    pub fetched: Result<&'a str, &'a str>,
    pub rendered: Option<&'a str>,
}

/// The cluster's DNS domain, for the Service names sidecars accept in `Host`.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Computes the status and objects for `policy`, given the namespace's policies, pods and
/// services as cached, at time `now`.
pub fn desired(
    policy: &McpPolicy,
    seen: &Seen,
    version: &str,
    sidecar_ports: &[u16],
    now: Time,
) -> Desired {
    let old = policy.status.clone().unwrap_or_default();
    let matched: Vec<Pod> = seen
        .pods
        .iter()
        .filter(|p| selector_matches(&policy.spec.pod_selector, p.labels()))
        .cloned()
        .collect();
    let mut s = Shaping {
        policy,
        generation: policy.metadata.generation,
        conditions: old.conditions.clone(),
        events: Vec::new(),
        old: &old,
        now,
    };
    let mut status = McpPolicyStatus {
        observed_generation: s.generation,
        ..old.clone()
    };
    let (m, i, o) = render::pod_counts(policy, seen.pods, version);
    status.matched_pods = Some(m);
    status.injected_pods = Some(i);
    status.outdated_pods = Some(o);
    let (configmap, network_policy) = s.render(seen, &matched, sidecar_ports, &mut status);
    s.conflict(&matched, seen.policies);
    s.bypass(seen.services, &matched);
    s.keys(seen.keys);
    s.isolation(seen.network_policies, &matched);
    status.conditions = s.conditions;
    Desired {
        status,
        configmap,
        network_policy,
        events: s.events,
    }
}

/// The conditions and events of one policy's status, set condition by condition.
struct Shaping<'a> {
    policy: &'a McpPolicy,
    /// The status as it was.
    old: &'a McpPolicyStatus,
    generation: Option<i64>,
    conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    events: Vec<PolicyEvent>,
    now: Time,
}

impl Shaping<'_> {
    fn warnings(&mut self) -> Warnings<'_> {
        Warnings {
            old: self.old,
            conditions: &mut self.conditions,
            events: &mut self.events,
            generation: self.generation,
        }
    }

    fn set(&mut self, type_: &str, status: bool, reason: &str, message: String) {
        render::set_condition(
            &mut self.conditions,
            type_,
            status,
            reason,
            message,
            self.generation,
            self.now.clone(),
        );
    }

    /// `Ready`: the policy rendered to its ConfigMap (and NetworkPolicy), or why it did not
    /// compile (sidecars keep the last valid render).
    fn render(
        &mut self,
        seen: &Seen,
        matched: &[Pod],
        sidecar_ports: &[u16],
        status: &mut McpPolicyStatus,
    ) -> (Option<ConfigMap>, Option<NetworkPolicy>) {
        let policy = self.policy;
        let hosts = render::service_hosts(seen.services, matched, CLUSTER_DOMAIN);
        let r = match render::rendered_with_hosts(policy, &hosts) {
            Ok(r) => r,
            Err(errs) => {
                self.invalid(&errs);
                return (None, None);
            }
        };
        let configmap = configmap_name(&policy.name_any());
        if self.old.policy_hash.as_deref() != Some(r.hash.as_str()) {
            self.events.push(PolicyEvent::normal(
                "Rendered",
                format!(
                    "policy rendered to ConfigMap {configmap} (hash {})",
                    &r.hash[..12.min(r.hash.len())]
                ),
            ));
        }
        self.set(
            cond::READY,
            true,
            cond::RENDERED,
            format!("rendered to ConfigMap {configmap}"),
        );
        status.policy_hash = Some(r.hash.clone());
        status.tool_count = Some(r.tool_count as i32);
        let np = (policy.spec.isolation() == Isolation::NetworkPolicy)
            .then(|| render::network_policy(policy, matched, sidecar_ports));
        // A failed fetch keeps the keys already rendered: sidecars never lose good keys.
        let key_text = seen.keys.and_then(|k| k.fetched.ok().or(k.rendered));
        (
            Some(render::configmap(
                policy,
                &r,
                key_text,
                seen.admin_keys,
                &render::peer_file(policy, matched),
            )),
            np,
        )
    }

    /// `Ready` False: the policy does not compile.
    fn invalid(&mut self, errs: &crate::policy::PolicyErrors) {
        let lines: Vec<String> = errs.0.iter().map(ToString::to_string).collect();
        let message = clip(format!(
            "the policy does not compile; sidecars keep the last valid render: {}",
            lines.join("; ")
        ));
        let was = self
            .old
            .conditions
            .iter()
            .find(|c| c.type_ == cond::READY)
            .map(|c| c.message.clone());
        if was.as_deref() != Some(message.as_str()) {
            self.events
                .push(PolicyEvent::warning(cond::INVALID_POLICY, message.clone()));
        }
        self.set(cond::READY, false, cond::INVALID_POLICY, message);
    }

    /// `Conflict`: pods this policy matches that an older policy wins.
    fn conflict(&mut self, matched: &[Pod], namespace_policies: &[McpPolicy]) {
        let policy = self.policy;
        let mut winners: Vec<String> = matched
            .iter()
            .filter_map(|p| selecting_policy(p, namespace_policies))
            .filter(|w| w.metadata.uid != policy.metadata.uid || w.name_any() != policy.name_any())
            .map(|w| w.name_any())
            .collect();
        winners.sort();
        winners.dedup();
        if winners.is_empty() {
            self.set(
                cond::CONFLICT,
                false,
                "NoConflict",
                "no older McpPolicy selects the same pods".into(),
            );
            return;
        }
        let message = format!(
            "older McpPolicy {} selects some of the same pods and is enforced on them",
            winners.join(", ")
        );
        if !self
            .old
            .conditions
            .iter()
            .any(|c| c.type_ == cond::CONFLICT && c.status == "True")
        {
            self.events
                .push(PolicyEvent::warning(cond::CONFLICT, message.clone()));
        }
        self.set(cond::CONFLICT, true, "OlderPolicyWins", clip(message));
    }

    /// `ServiceBypass`: a Service that sends to the upstream port by number, around the sidecar.
    fn bypass(&mut self, services: &[Service], matched: &[Pod]) {
        let bypass = render::bypassing_services(self.policy, services, matched);
        let found = (!bypass.is_empty()).then(|| {
            format!(
                "Service {} sends to port {} by number, around the sidecar: use targetPort: mcp",
                bypass.join(", "),
                self.policy.spec.upstream.port
            )
        });
        let now = self.now.clone();
        self.warnings().set(
            cond::SERVICE_BYPASS,
            found.map(|m| (cond::BYPASS_FOUND, m)),
            (
                cond::NO_BYPASS,
                "no Service targets the upstream port by number",
            ),
            now,
        );
    }

    /// `KeysUnavailable`, for a policy that verifies tokens.
    fn keys(&mut self, keys: Option<SeenKeys>) {
        let Some(k) = keys else {
            self.conditions
                .retain(|c| c.type_ != cond::KEYS_UNAVAILABLE);
            return;
        };
        let failed = k.fetched.err().map(|why| {
            let kept = match k.rendered {
                Some(_) => "sidecars keep the keys rendered before",
                None => "sidecars have no keys and refuse every token",
            };
            (cond::KEYS_FETCH_FAILED, format!("{why}; {kept}"))
        });
        let now = self.now.clone();
        self.warnings().set(
            cond::KEYS_UNAVAILABLE,
            failed,
            (
                cond::KEYS_FETCHED,
                "the issuer's keys are rendered beside the policy",
            ),
            now,
        );
    }

    /// `IsolationIneffective`: another NetworkPolicy admits traffic to the upstream port.
    fn isolation(&mut self, network_policies: &[NetworkPolicy], matched: &[Pod]) {
        let policy = self.policy;
        if policy.spec.isolation() != Isolation::NetworkPolicy {
            self.conditions
                .retain(|c| c.type_ != cond::ISOLATION_INEFFECTIVE);
            return;
        }
        let others = render::reopening_network_policies(policy, network_policies, matched);
        let found = (!others.is_empty()).then(|| {
            format!(
                "NetworkPolicy {} also admits traffic to port {} of the guarded pods \
                 (NetworkPolicies add up), so clients can reach the MCP server around the \
                 sidecar: exclude these pods from it, or limit its ports to the sidecar's",
                others.join(", "),
                policy.spec.upstream.port
            )
        });
        let now = self.now.clone();
        self.warnings().set(
            cond::ISOLATION_INEFFECTIVE,
            found.map(|m| (cond::OTHER_POLICY_ADMITS, m)),
            (
                cond::NO_OTHER_INGRESS,
                "no other NetworkPolicy admits traffic to the upstream port",
            ),
            now,
        );
    }
}

/// Whether the cached ConfigMap already holds what the reconciler renders (the approvals key is
/// the approval loop's).
fn same_data(a: Option<&ConfigMap>, b: &ConfigMap) -> bool {
    let ours = |cm: &ConfigMap| {
        let mut d = cm.data.clone().unwrap_or_default();
        d.remove(APPROVALS_KEY);
        d
    };
    a.is_some_and(|a| {
        ours(a) == ours(b) && a.metadata.owner_references == b.metadata.owner_references
    })
}

/// The reconciler kube-runtime calls.
pub async fn reconcile(policy: Arc<McpPolicy>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = policy.namespace().ok_or(Error::NoNamespace)?;
    let name = policy.name_any();
    let cached = Cached::read(&policy, &ctx, &ns);
    let cm_name = configmap_name(&name);
    let cached_cm = ctx.configmaps.get(&ObjectRef::new(&cm_name).within(&ns));
    let source = super::keys::Source::of(&policy.spec);
    let fetched = match &source {
        Some(src) => Some(ctx.keys.get(&ctx.client, src).await),
        None => None,
    };
    let keys = fetched.as_ref().map(|f| SeenKeys {
        fetched: f.as_deref().map_err(String::as_str),
        rendered: cached_cm
            .as_ref()
            .and_then(|cm| cm.data.as_ref()?.get(KEYS_KEY))
            .map(String::as_str),
    });
    let admin_keys = admin_keys(&ctx, cached_cm.as_deref()).await;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let d = desired(
        &policy,
        &Seen {
            policies: &cached.policies,
            pods: &cached.pods,
            services: &cached.services,
            network_policies: &cached.network_policies,
            keys,
            admin_keys: admin_keys.as_deref(),
        },
        &ctx.version,
        &ctx.sidecar_ports,
        now,
    );
    let pp = PatchParams::apply(MANAGER).force();
    if let Some(cm) = &d.configmap {
        if !same_data(cached_cm.as_deref(), cm) {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
            api.patch(&cm_name, &pp, &Patch::Apply(cm)).await?;
        }
    }
    write_network_policy(&ctx, &ns, &cm_name, &d).await?;
    ensure_peer_key(&ctx, &policy, &ns).await;
    if policy.status.as_ref() != Some(&d.status) {
        write_status(&ctx, &ns, &name, &d.status).await?;
    }
    let reference = policy.object_ref(&());
    for ev in &d.events {
        if let Err(e) = ctx.recorder.publish(&ev.event(), &reference).await {
            tracing::debug!(error = %e, "could not record an Event");
        }
    }
    export_hash(
        &ctx,
        &format!("{ns}/{name}"),
        d.status.policy_hash.as_deref(),
    );
    account(&ctx, &policy, d.configmap.is_some(), started);
    // Key sets rotate (the cluster's admin keys are rendered for every policy): a policy is
    // looked at again when they may have changed.
    Ok(Action::requeue(ctx.keys.refresh().min(RESYNC)))
}

/// Creates the policy's peer-key Secret once (a fresh random key). The controller may create
/// Secrets in the policies' namespaces, not read them: one that exists is left as it is. A
/// failure is retried at the next reconcile; until then sidecars count on shares.
async fn ensure_peer_key(ctx: &Ctx, policy: &McpPolicy, ns: &str) {
    let uid = policy.metadata.uid.clone().unwrap_or_default();
    if ctx
        .peer_keys
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&uid)
    {
        return;
    }
    let mut key = vec![0u8; 32];
    if let Err(e) = getrandom::fill(&mut key) {
        tracing::error!(error = %e, "no randomness for a peer key");
        return;
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let created = api
        .create(&PostParams::default(), &render::peer_secret(policy, key))
        .await;
    match created {
        Ok(_) => tracing::info!(policy = %policy.name_any(), "peer key created"),
        Err(kube::Error::Api(ae)) if ae.code == 409 => {}
        Err(e) => {
            tracing::warn!(policy = %policy.name_any(), error = %e, "peer key not created; retried at the next reconcile");
            return;
        }
    }
    ctx.peer_keys
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(uid);
}

/// What a policy's status depends on, copied out of the caches: the pods it selects, the
/// policies that select any of those pods (conflicts), and the namespace's services and
/// NetworkPolicies. Copying whole namespaces per reconcile cost gigabytes with 1,000 policies.
struct Cached {
    pods: Vec<Pod>,
    policies: Vec<McpPolicy>,
    services: Vec<Service>,
    network_policies: Vec<NetworkPolicy>,
}

impl Cached {
    fn read(policy: &McpPolicy, ctx: &Ctx, ns: &str) -> Cached {
        let selector = &policy.spec.pod_selector;
        let pods: Vec<Pod> = ctx
            .pods
            .state_filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && selector_matches(selector, p.labels())
            })
            .iter()
            .map(|p| (**p).clone())
            .collect();
        let policies: Vec<McpPolicy> = ctx
            .policies
            .state_filter(|q| {
                q.metadata.namespace.as_deref() == Some(ns)
                    && (q.metadata.name == policy.metadata.name
                        || pods
                            .iter()
                            .any(|p| selector_matches(&q.spec.pod_selector, p.labels())))
            })
            .iter()
            .map(|q| (**q).clone())
            .collect();
        Cached {
            pods,
            policies,
            services: in_namespace(&ctx.services, ns),
            network_policies: in_namespace(&ctx.network_policies, ns),
        }
    }
}

/// The admin API's key file every policy's sidecars get (they answer the controller's reads of
/// their tools, and of approval requests where rules need approval); a failed fetch keeps what
/// the sidecars have.
async fn admin_keys(ctx: &Ctx, cached_cm: Option<&ConfigMap>) -> Option<String> {
    match ctx
        .keys
        .get(&ctx.client, &super::keys::Source::Cluster)
        .await
    {
        Ok(set) => Some(super::keys::with_subject(&set, &ctx.admin_subject)),
        Err(_) => cached_cm.and_then(|cm| cm.data.as_ref()?.get(ADMIN_KEYS_KEY).cloned()),
    }
}

/// The policy's own NetworkPolicy: applied when it differs, deleted when isolation is turned
/// off (a policy that does not compile keeps its last one).
async fn write_network_policy(ctx: &Ctx, ns: &str, name: &str, d: &Desired) -> Result<(), Error> {
    let api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), ns);
    // The cache holds every NetworkPolicy (for IsolationIneffective); only a labelled one of
    // this name is the controller's own.
    let own = ctx
        .network_policies
        .get(&ObjectRef::new(name).within(ns))
        .filter(|np| render::is_managed(&np.metadata));
    match (&d.network_policy, own) {
        (Some(np), cached) => {
            if cached.as_deref().map(|c| &c.spec) != Some(&np.spec) {
                let pp = PatchParams::apply(MANAGER).force();
                api.patch(name, &pp, &Patch::Apply(np)).await?;
            }
        }
        (None, Some(_)) if d.configmap.is_some() => {
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        (None, _) => {}
    }
    Ok(())
}

/// The status, by server-side apply; what the sidecars see of the server's tools is the tools
/// loop's to write.
async fn write_status(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    status: &McpPolicyStatus,
) -> Result<(), Error> {
    let api: Api<McpPolicy> = Api::namespaced(ctx.client.clone(), ns);
    let mut status = serde_json::to_value(status).unwrap_or_default();
    super::tools::strip(&mut status);
    let body = json!({
        "apiVersion": "mcpwarden.dev/v1alpha1",
        "kind": "McpPolicy",
        "status": status,
    });
    let pp = PatchParams::apply(MANAGER).force();
    api.patch_status(name, &pp, &Patch::Apply(&body)).await?;
    Ok(())
}

/// A reconciliation done: its metrics, and the policy's failures forgotten.
fn account(ctx: &Ctx, policy: &McpPolicy, valid: bool, started: Instant) {
    ctx.metrics
        .reconciliations
        .with_label_values(&[if valid { "ok" } else { "invalid" }])
        .inc();
    ctx.metrics
        .reconcile_duration
        .with_label_values(&[] as &[&str])
        .observe(started.elapsed().as_secs_f64());
    ctx.failures
        .lock()
        .expect("failures lock")
        .remove(&ObjectRef::from_obj(policy));
}

/// `policy_rendered_info{policy,hash}`: one series per live policy, its latest hash; policies
/// that no longer exist lose theirs.
fn export_hash(ctx: &Ctx, policy: &str, hash: Option<&str>) {
    let mut exported = ctx.exported.lock().expect("exported lock");
    if let Some(hash) = hash {
        if let Some(old) = exported.insert(policy.to_string(), hash.to_string()) {
            if old != hash {
                let _ = ctx.metrics.rendered.remove_label_values(&[policy, &old]);
            }
        }
        ctx.metrics
            .rendered
            .with_label_values(&[policy, hash])
            .set(1);
    }
    // A deleted policy leaves more series than policies; only then is the store walked.
    if exported.len() <= ctx.policies.len() {
        return;
    }
    let live: std::collections::HashSet<String> = ctx
        .policies
        .state()
        .iter()
        .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
        .collect();
    exported.retain(|p, h| {
        let keep = live.contains(p) || p == policy;
        if !keep {
            let _ = ctx.metrics.rendered.remove_label_values(&[p, h]);
        }
        keep
    });
}

/// Backoff for failed reconciliations: 1 s doubling to 5 minutes per policy; counted.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(8)).min(RESYNC)
}

/// kube-runtime's error policy: count, log, retry with backoff.
pub fn error_policy(policy: Arc<McpPolicy>, err: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics
        .reconciliations
        .with_label_values(&["error"])
        .inc();
    let n = {
        let mut f = ctx.failures.lock().expect("failures lock");
        let n = f.entry(ObjectRef::from_obj(&*policy)).or_insert(0);
        *n += 1;
        *n
    };
    let delay = backoff(n - 1);
    tracing::warn!(
        policy = %format!("{}/{}", policy.namespace().unwrap_or_default(), policy.name_any()),
        error = %err,
        retry_in_s = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}
