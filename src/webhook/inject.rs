//! What the mutating webhook does to a pod: a pure function from the pod, the namespace's
//! McpPolicies and the injection settings to a JSON patch, a reason to skip, or a refusal.
//!
//! Injection adds the sidecar (a regular container, or a native sidecar: an init container with
//! `restartPolicy: Always`), the policy ConfigMap as a read-only optional volume, probes, scrape
//! and version annotations, and moves the container port named `mcp` from the app to the sidecar,
//! so a Service with `targetPort: mcp` reaches the sidecar unchanged. App probes that named `mcp`
//! are rewritten to the port's number. It is idempotent: an injected pod is left alone.

use crate::cluster::sidecar::{sidecar_container, upstream_url};
use crate::cluster::{
    configmap_name, peer_secret_name, selecting_policy, sidecar_state, Carried, InjectConfig,
    CONTAINER, INJECT_LABEL, MCP_PORT_NAME, PEER_VOLUME, POLICY_ANNOTATION, VERSION_ANNOTATION,
    VOLUME,
};
use crate::crd::McpPolicy;
use k8s_openapi::api::core::v1::{ConfigMapVolumeSource, Pod, Probe, SecretVolumeSource, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// The webhook's answer for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// Patch the pod to enforce `policy` (`namespace/name`).
    Inject {
        patch: json_patch::Patch,
        policy: String,
    },
    /// Leave the pod alone, for this reason.
    Skip(String),
    /// Refuse the pod: it would run unguarded. The message says how to fix it.
    Refuse(String),
}

/// Decides what happens to `pod`, given the McpPolicies of its namespace.
pub fn mutate(pod: &Pod, policies: &[McpPolicy], cfg: &InjectConfig) -> Mutation {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    if labels.get(INJECT_LABEL).map(String::as_str) == Some("false") {
        return Mutation::Skip(format!("the pod is labelled {INJECT_LABEL}=false"));
    }
    let Some(policy) = selecting_policy(pod, policies) else {
        return Mutation::Skip("no McpPolicy in the namespace selects this pod".into());
    };
    let ns = policy.metadata.namespace.as_deref().unwrap_or("default");
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    let policy_id = format!("{ns}/{name}");
    match sidecar_state(pod, policy, Some(cfg)) {
        Carried::Ours => return Mutation::Skip("the sidecar is already injected".into()),
        Carried::Foreign(why) => {
            return Mutation::Refuse(format!(
            "McpPolicy {policy_id} selects this pod, and it has a container named \"{CONTAINER}\" \
                 that is not the sidecar mcp-warden writes ({why}): rename that container (a pod \
                 cannot opt out by naming one of its own \"{CONTAINER}\"), or label the pod \
                 {INJECT_LABEL}=false to run it unguarded"
        ))
        }
        Carried::None => {}
    }
    let (app, mcp_port) = match injectable(pod, &policy_id) {
        Ok(found) => found,
        Err(why) => return Mutation::Refuse(why),
    };
    let mut out = pod.clone();
    add_sidecar(&mut out, app, mcp_port, policy, cfg);
    annotate(&mut out, &policy_id, cfg);
    let before =
        serde_json::to_value(pod).expect("serialising a value built in memory cannot fail");
    let after =
        serde_json::to_value(&out).expect("serialising a value built in memory cannot fail");
    Mutation::Inject {
        patch: json_patch::diff(&before, &after),
        policy: policy_id,
    }
}

/// The container serving MCP (by index) and its `mcp` port, or why the pod cannot be guarded.
fn injectable(pod: &Pod, policy_id: &str) -> Result<(usize, i32), String> {
    let Some(spec) = pod.spec.as_ref() else {
        return Err("the pod has no spec".into());
    };
    if spec.host_network == Some(true) {
        return Err(format!(
            "McpPolicy {policy_id} selects this pod, but it uses hostNetwork: its MCP port would be \
             open on the node, around the sidecar and any NetworkPolicy. Run it without \
             hostNetwork, or label the pod {INJECT_LABEL}=false to run it unguarded"
        ));
    }
    spec.containers
        .iter()
        .enumerate()
        .find_map(|(i, c)| {
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(MCP_PORT_NAME))
                .map(|p| (i, p.container_port))
        })
        .ok_or_else(|| format!(
            "McpPolicy {policy_id} selects this pod, but no container declares a port named \"{MCP_PORT_NAME}\": \
             name the MCP server's containerPort \"{MCP_PORT_NAME}\" (and use targetPort: {MCP_PORT_NAME} in its Service) \
             so mcp-warden can route it through the sidecar, or label the pod {INJECT_LABEL}=false to run it unguarded"
        ))
}

/// The sidecar in front of container `app`: the `mcp` port moves to it (probes that named the
/// port now name its number), the policy's ConfigMap is mounted, and the sidecar runs as a
/// native sidecar (an init container that keeps running) or beside the app.
fn add_sidecar(out: &mut Pod, app: usize, mcp_port: i32, policy: &McpPolicy, cfg: &InjectConfig) {
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    let spec = out.spec.as_mut().expect("checked by injectable");
    if let Some(ports) = spec.containers[app].ports.as_mut() {
        ports.retain(|p| p.name.as_deref() != Some(MCP_PORT_NAME));
    }
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        for probe in [
            &mut c.liveness_probe,
            &mut c.readiness_probe,
            &mut c.startup_probe,
        ]
        .into_iter()
        .flatten()
        {
            rewrite_probe_port(probe, mcp_port);
        }
    }
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(Volume {
        name: VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: configmap_name(name),
            optional: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    });
    // Optional: until the controller has created it, the sidecar counts on shares. Only the
    // sidecar mounts it (readable by its non-root user; no other container sees it).
    volumes.push(Volume {
        name: PEER_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(peer_secret_name(name)),
            optional: Some(true),
            default_mode: Some(0o444),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut sidecar = sidecar_container(cfg, &upstream_url(policy));
    if cfg.native_sidecar {
        sidecar.restart_policy = Some("Always".into());
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .push(sidecar);
    } else {
        spec.containers.push(sidecar);
    }
}

/// Which policy injected the pod and at which version, and where Prometheus scrapes it (an
/// app's own scrape settings are kept; the chart's PodMonitor scrapes the sidecar too).
fn annotate(out: &mut Pod, policy_id: &str, cfg: &InjectConfig) {
    let annotations = out.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(POLICY_ANNOTATION.into(), policy_id.to_owned());
    annotations.insert(VERSION_ANNOTATION.into(), cfg.version.clone());
    for (k, v) in [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", cfg.admin_port.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
    ] {
        annotations.entry(k.into()).or_insert(v);
    }
}

fn rewrite_probe_port(probe: &mut Probe, number: i32) {
    let named = |p: &IntOrString| matches!(p, IntOrString::String(s) if s == MCP_PORT_NAME);
    if let Some(h) = probe.http_get.as_mut() {
        if named(&h.port) {
            h.port = IntOrString::Int(number);
        }
    }
    if let Some(t) = probe.tcp_socket.as_mut() {
        if named(&t.port) {
            t.port = IntOrString::Int(number);
        }
    }
}
