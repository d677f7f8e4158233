//! What the controller writes, as pure functions of what it read: the policy ConfigMap, the
//! isolating NetworkPolicy, the status conditions, and the warnings about bypasses.

use crate::cluster::{
    configmap_name, label_selector_matches, peer_secret_name, selector_matches, sidecar_state,
    Carried, ADMIN_KEYS_KEY, ADMIN_PORT_NAME, CONTAINER, KEYS_KEY, MANAGED_BY, MCP_PORT_NAME,
    PEERS_KEY, PEER_KEY_KEY, POLICY_KEY, POLICY_LABEL, SEEN_KEY, VERSION_ANNOTATION,
};
use crate::crd::{render, McpPolicy, Pinning, Rendered};
use crate::peering::{PeerEntry, PeerFile};
use crate::tools::seen::FirstSeen;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, LabelSelector, LabelSelectorRequirement, ObjectMeta, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};

/// Condition types and reasons.
pub mod cond {
    pub const READY: &str = "Ready";
    pub const SERVICE_BYPASS: &str = "ServiceBypass";
    pub const RENDERED: &str = "Rendered";
    pub const INVALID_POLICY: &str = "InvalidPolicy";
    pub const CONFLICT: &str = "Conflict";
    pub const NO_BYPASS: &str = "NoBypass";
    pub const BYPASS_FOUND: &str = "TargetsUpstreamPort";
    pub const ISOLATION_INEFFECTIVE: &str = "IsolationIneffective";
    pub const OTHER_POLICY_ADMITS: &str = "OtherNetworkPolicyAdmits";
    pub const NO_OTHER_INGRESS: &str = "NoOtherIngress";
    pub const KEYS_UNAVAILABLE: &str = "KeysUnavailable";
    pub const KEYS_FETCHED: &str = "Fetched";
    pub const KEYS_FETCH_FAILED: &str = "FetchFailed";
    pub const UNKNOWN_TOOLS: &str = "UnknownTools";
    pub const NAMES_NO_TOOL: &str = "NamesNoOfferedTool";
    pub const ALL_NAMES_OFFERED: &str = "EveryNameOffered";
    pub const UNKNOWN_ARGUMENTS: &str = "UnknownArguments";
    pub const ARGUMENT_NOT_IN_SCHEMA: &str = "ArgumentNotInSchema";
    pub const ARGUMENTS_MATCH: &str = "ArgumentsMatchSchemas";
    pub const TOOL_DEFINITION_CHANGED: &str = "ToolDefinitionChanged";
    pub const DEFINITION_CHANGED: &str = "DefinitionChanged";
    pub const DEFINITIONS_UNCHANGED: &str = "DefinitionsUnchanged";
}

fn labels(policy_name: &str) -> BTreeMap<String, String> {
    [
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (POLICY_LABEL.to_string(), policy_name.to_string()),
    ]
    .into()
}

fn owned_meta(policy: &McpPolicy, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: policy.metadata.namespace.clone(),
        labels: Some(labels(policy.metadata.name.as_deref().unwrap_or_default())),
        owner_references: policy.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

/// Renders the policy; the ConfigMap holding it is [`configmap`].
pub fn rendered(policy: &McpPolicy) -> Result<Rendered, crate::policy::PolicyErrors> {
    let ns = policy.metadata.namespace.as_deref().unwrap_or("default");
    render(
        ns,
        policy.metadata.name.as_deref().unwrap_or_default(),
        &policy.spec,
    )
}

/// The ConfigMap `<name>-mcp-warden` sidecars mount, owned by the policy (so deleting the policy
/// deletes it): the policy, and the key set tokens are verified with when it verifies tokens.
/// With approval rules, also the admin API's key file; under `pinning: firstSeen`, the policy's
/// record of first-seen definitions (from its status).
pub fn configmap(
    policy: &McpPolicy,
    r: &Rendered,
    keys: Option<&str>,
    admin_keys: Option<&str>,
    peers: &PeerFile,
) -> ConfigMap {
    let name = configmap_name(policy.metadata.name.as_deref().unwrap_or_default());
    let mut data: BTreeMap<String, String> = [(
        POLICY_KEY.to_string(),
        String::from_utf8_lossy(&r.json).into_owned(),
    )]
    .into();
    if let Some(k) = keys {
        data.insert(KEYS_KEY.to_string(), k.to_owned());
    }
    if let Some(k) = admin_keys {
        data.insert(ADMIN_KEYS_KEY.to_string(), k.to_owned());
    }
    if policy.spec.policy.pinning == Some(Pinning::FirstSeen) {
        let recorded = policy.status.as_ref().and_then(|s| s.first_seen.clone());
        let record = FirstSeen {
            tools: recorded.unwrap_or_default(),
        };
        data.insert(SEEN_KEY.to_string(), record.to_json());
    }
    data.insert(PEERS_KEY.to_string(), peers.to_json());
    ConfigMap {
        metadata: owned_meta(policy, name),
        data: Some(data),
        ..Default::default()
    }
}

/// The Secret with the key the policy's sidecars authenticate each other with (created once,
/// owned by the policy; only the sidecars mount it).
pub fn peer_secret(policy: &McpPolicy, key: Vec<u8>) -> Secret {
    let name = peer_secret_name(policy.metadata.name.as_deref().unwrap_or_default());
    Secret {
        metadata: owned_meta(policy, name),
        type_: Some("Opaque".into()),
        data: Some([(PEER_KEY_KEY.to_string(), ByteString(key))].into()),
        immutable: Some(true),
        ..Default::default()
    }
}

/// The policy's sidecars for one budget across replicas: how many of `pods` carry its sidecar
/// (and are not being deleted), and the ready ones by name and admin address.
pub fn peer_file(policy: &McpPolicy, pods: &[Pod]) -> PeerFile {
    let ours: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| sidecar_state(p, policy, None) == Carried::Ours)
        .collect();
    let mut peers: Vec<PeerEntry> = ours.iter().filter_map(|p| ready_peer(p)).collect();
    peers.sort();
    PeerFile {
        replicas: ours.len() as u32,
        peers,
    }
}

/// A pod whose sidecar is ready, with an IP: its name and admin address.
fn ready_peer(pod: &Pod) -> Option<PeerEntry> {
    let status = pod.status.as_ref()?;
    let ready = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .any(|c| c.name == CONTAINER && c.ready);
    let ip: std::net::IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let spec = pod.spec.as_ref()?;
    let port = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter(|c| c.name == CONTAINER)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(ADMIN_PORT_NAME))?
        .container_port;
    if !ready {
        return None;
    }
    Some(PeerEntry {
        name: pod.metadata.name.clone()?,
        address: std::net::SocketAddr::new(ip, u16::try_from(port).ok()?).to_string(),
    })
}

/// The NetworkPolicy for `isolation: NetworkPolicy`: the selected pods accept traffic on the
/// sidecar's ports and every other port their containers declare, never on `upstream.port`
/// (so nothing reaches the MCP server around the sidecar).
pub fn network_policy(policy: &McpPolicy, pods: &[Pod], sidecar_ports: &[u16]) -> NetworkPolicy {
    let upstream = i32::from(policy.spec.upstream.port);
    let mut ports: BTreeSet<i32> = sidecar_ports.iter().map(|p| i32::from(*p)).collect();
    for pod in pods {
        for c in pod.spec.iter().flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        }) {
            ports.extend(c.ports.iter().flatten().map(|p| p.container_port));
        }
    }
    ports.remove(&upstream);
    let sel = &policy.spec.pod_selector;
    let pod_selector = LabelSelector {
        match_labels: sel.match_labels.clone(),
        match_expressions: sel.match_expressions.as_ref().map(|exprs| {
            exprs
                .iter()
                .map(|e| LabelSelectorRequirement {
                    key: e.key.clone(),
                    operator: format!("{:?}", e.operator),
                    values: e.values.clone(),
                })
                .collect()
        }),
    };
    NetworkPolicy {
        metadata: owned_meta(
            policy,
            configmap_name(policy.metadata.name.as_deref().unwrap_or_default()),
        ),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pod_selector),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: None,
                ports: Some(
                    ports
                        .into_iter()
                        .map(|p| NetworkPolicyPort {
                            port: Some(IntOrString::Int(p)),
                            protocol: Some("TCP".into()),
                            end_port: None,
                        })
                        .collect(),
                ),
            }]),
            egress: None,
        }),
    }
}

/// Whether a Service's selector selects one of `pods`.
fn selects_any(svc: &Service, pods: &[Pod]) -> bool {
    let Some(sel) = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return false;
    };
    pods.iter().any(|p| {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    })
}

/// The `Host` names agents in the cluster reach the pods by: every DNS name (`svc`, `svc.ns`,
/// `svc.ns.svc`, `svc.ns.svc.<cluster domain>`) and cluster IP of the Services that select one
/// of `pods`. Sorted and without duplicates, so the render changes only when they do.
pub fn service_hosts(services: &[Service], pods: &[Pod], cluster_domain: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    for svc in services.iter().filter(|s| selects_any(s, pods)) {
        let (Some(name), Some(ns)) = (&svc.metadata.name, &svc.metadata.namespace) else {
            continue;
        };
        out.insert(name.clone());
        out.insert(format!("{name}.{ns}"));
        out.insert(format!("{name}.{ns}.svc"));
        out.insert(format!("{name}.{ns}.svc.{cluster_domain}"));
        let spec = svc.spec.as_ref();
        for ip in spec
            .and_then(|s| s.cluster_ips.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(spec.and_then(|s| s.cluster_ip.clone()))
            .filter(|ip| !ip.is_empty() && ip != "None")
        {
            out.insert(if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip
            });
        }
    }
    out.into_iter().collect()
}

/// [`rendered`] with `hosts` added to `transport.allowedHosts`.
pub fn rendered_with_hosts(
    policy: &McpPolicy,
    hosts: &[String],
) -> Result<Rendered, crate::policy::PolicyErrors> {
    if hosts.is_empty() {
        return rendered(policy);
    }
    let mut spec = policy.spec.clone();
    let t = spec.policy.transport.get_or_insert_with(Default::default);
    let mut all = t.allowed_hosts.take().unwrap_or_default();
    all.extend(hosts.iter().cloned());
    let mut seen = BTreeSet::new();
    all.retain(|h| seen.insert(h.clone()));
    t.allowed_hosts = Some(all);
    let ns = policy.metadata.namespace.as_deref().unwrap_or("default");
    render(
        ns,
        policy.metadata.name.as_deref().unwrap_or_default(),
        &spec,
    )
}

/// NetworkPolicies other than the controller's that let traffic reach `upstream.port` of one
/// of `pods`: NetworkPolicies add up, so any ingress rule covering that port (a common "allow
/// all from the same namespace" among them) reopens what the rendered one closes.
pub fn reopening_network_policies(
    policy: &McpPolicy,
    network_policies: &[NetworkPolicy],
    pods: &[Pod],
) -> Vec<String> {
    let upstream = i32::from(policy.spec.upstream.port);
    let covers = |p: &NetworkPolicyPort| match &p.port {
        None => true,
        Some(IntOrString::Int(n)) => match p.end_port {
            Some(end) => (*n..=end).contains(&upstream),
            None => *n == upstream,
        },
        // A named port resolves per pod; the `mcp` name belongs to the sidecar after injection,
        // but another name for the server's port would reach it.
        Some(IntOrString::String(name)) => name != MCP_PORT_NAME,
    };
    let mut out: Vec<String> = network_policies
        .iter()
        .filter(|np| !is_managed(&np.metadata))
        .filter(|np| {
            let Some(spec) = &np.spec else { return false };
            let ingress_type = spec
                .policy_types
                .as_ref()
                .is_none_or(|t| t.iter().any(|t| t == "Ingress"));
            let selects = pods.iter().any(|p| {
                label_selector_matches(&spec.pod_selector.clone().unwrap_or_default(), p.labels())
            });
            let admits = spec.ingress.iter().flatten().any(|rule| {
                rule.ports
                    .as_ref()
                    .is_none_or(|ports| ports.is_empty() || ports.iter().any(covers))
            });
            ingress_type && selects && admits
        })
        .filter_map(|np| np.metadata.name.clone())
        .collect();
    out.sort();
    out
}

/// Services that would reach the MCP server directly: they select a matched pod and send to the
/// upstream port by number (a `targetPort: mcp` goes to the sidecar).
pub fn bypassing_services(policy: &McpPolicy, services: &[Service], pods: &[Pod]) -> Vec<String> {
    let upstream = i32::from(policy.spec.upstream.port);
    let mut out: Vec<String> = services
        .iter()
        .filter(|svc| {
            let Some(spec) = &svc.spec else { return false };
            selects_any(svc, pods)
                && spec
                    .ports
                    .iter()
                    .flatten()
                    .any(|port| match &port.target_port {
                        Some(IntOrString::Int(n)) => *n == upstream,
                        Some(IntOrString::String(_)) => false,
                        None => port.port == upstream,
                    })
        })
        .filter_map(|svc| svc.metadata.name.clone())
        .collect();
    out.sort();
    out
}

/// Pods the policy's selector matches, and how many of those run the sidecar, and how many run
/// one older than `version`.
pub fn pod_counts(policy: &McpPolicy, pods: &[Pod], version: &str) -> (i32, i32, i32) {
    let matched: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            selector_matches(
                &policy.spec.pod_selector,
                &p.metadata.labels.clone().unwrap_or_default(),
            )
        })
        .collect();
    // A pod counts as injected only when it runs this policy's sidecar (an app container that
    // merely has the sidecar's name does not).
    let injected: Vec<&&Pod> = matched
        .iter()
        .filter(|p| sidecar_state(p, policy, None) == Carried::Ours)
        .collect();
    let outdated = injected
        .iter()
        .filter(|p| {
            let v = p
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(VERSION_ANNOTATION));
            v.is_none_or(|v| older(v, version))
        })
        .count();
    (matched.len() as i32, injected.len() as i32, outdated as i32)
}

/// Whether dotted version `a` is older than `b` (numeric components; anything after `-` ignored).
pub fn older(a: &str, b: &str) -> bool {
    let parts = |v: &str| -> Vec<u64> {
        v.split('-')
            .next()
            .unwrap_or("")
            .split('.')
            .map(|x| x.parse().unwrap_or(0))
            .collect()
    };
    parts(a) < parts(b)
}

/// Sets a condition: `lastTransitionTime` moves only when the status changes; reason, message
/// and observedGeneration always follow the latest observation.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Time,
) {
    let status = if status { "True" } else { "False" }.to_string();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status;
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: now,
        }),
    }
}

/// Whether an object carries mcp-warden's `managed-by` label (the controller wrote it).
pub fn is_managed(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY.0))
        .map(String::as_str)
        == Some(MANAGED_BY.1)
}
