//! What the mutating webhook does to a pod: a pure function from the pod, the namespace's
//! McpPolicies and the injection settings to a JSON patch, a reason to skip, or a refusal.
//!
//! Injection adds the sidecar (a regular container, or a native sidecar: an init container with
//! `restartPolicy: Always`), the policy ConfigMap as a read-only optional volume, probes, scrape
//! and version annotations, and moves the container port named `mcp` from the app to the sidecar,
//! so a Service with `targetPort: mcp` reaches the sidecar unchanged. App probes that named `mcp`
//! are rewritten to the port's number. It is idempotent: an injected pod is left alone.

use crate::crd::{McpPolicy, PodSelector, SelectorOperator};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction, Pod, Probe,
    ResourceRequirements, SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// Pod label that opts a pod out (`"false"`), usable in the webhook's `objectSelector`.
pub const INJECT_LABEL: &str = "mcpwarden.dev/inject";
/// Namespace label that opts a namespace in (`enabled`).
pub const NAMESPACE_LABEL: &str = "mcpwarden.dev/injection";
/// Annotation naming the policy (`namespace/name`) an injected pod enforces.
pub const POLICY_ANNOTATION: &str = "mcpwarden.dev/policy";
/// Annotation with the injected sidecar's version.
pub const VERSION_ANNOTATION: &str = "mcpwarden.dev/sidecar-version";
/// The sidecar container's name.
pub const CONTAINER: &str = "mcp-warden";
/// The policy volume's name and where it is mounted.
pub const VOLUME: &str = "mcp-warden-policy";
pub const MOUNT_PATH: &str = "/etc/mcp-warden";
/// The file the sidecar reads in the mount: the ConfigMap's key.
pub const POLICY_FILE: &str = "policy.json";
/// The container port name Services route to.
pub const MCP_PORT_NAME: &str = "mcp";
const ADMIN_PORT_NAME: &str = "mcp-warden-adm";

/// The ConfigMap the controller renders for a policy.
pub fn configmap_name(policy: &str) -> String {
    format!("{policy}-mcp-warden")
}

/// How the sidecar is injected (from the controller's flags).
#[derive(Debug, Clone)]
pub struct InjectConfig {
    pub image: String,
    pub image_pull_policy: Option<String>,
    /// The sidecar's version, recorded in an annotation.
    pub version: String,
    pub proxy_port: u16,
    pub admin_port: u16,
    pub resources: ResourceRequirements,
    /// The numeric user the sidecar runs as (PodSecurity `restricted` needs non-root).
    pub run_as_user: i64,
    /// Inject as a native sidecar (an init container with `restartPolicy: Always`).
    pub native_sidecar: bool,
}

impl InjectConfig {
    pub fn new(image: impl Into<String>, version: impl Into<String>) -> InjectConfig {
        InjectConfig {
            image: image.into(),
            image_pull_policy: None,
            version: version.into(),
            proxy_port: 9480,
            admin_port: 9481,
            resources: ResourceRequirements::default(),
            run_as_user: 65532,
            native_sidecar: false,
        }
    }
}

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
    let Some(spec) = pod.spec.as_ref() else {
        return Mutation::Refuse("the pod has no spec".into());
    };
    if spec.host_network == Some(true) {
        return Mutation::Refuse(format!(
            "McpPolicy {policy_id} selects this pod, but it uses hostNetwork: its MCP port would be \
             open on the node, around the sidecar and any NetworkPolicy. Run it without \
             hostNetwork, or label the pod {INJECT_LABEL}=false to run it unguarded"
        ));
    }
    let Some((app, mcp_port)) = spec.containers.iter().enumerate().find_map(|(i, c)| {
        c.ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(MCP_PORT_NAME))
            .map(|p| (i, p.container_port))
    }) else {
        return Mutation::Refuse(format!(
            "McpPolicy {policy_id} selects this pod, but no container declares a port named \"{MCP_PORT_NAME}\": \
             name the MCP server's containerPort \"{MCP_PORT_NAME}\" (and use targetPort: {MCP_PORT_NAME} in its Service) \
             so mcp-warden can route it through the sidecar, or label the pod {INJECT_LABEL}=false to run it unguarded"
        ));
    };

    let mut out = pod.clone();
    let spec = out.spec.as_mut().expect("checked above");
    // The `mcp` port moves to the sidecar; probes that named it now name its number.
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
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: configmap_name(name),
            optional: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    });
    let upstream = format!(
        "http://127.0.0.1:{}{}",
        policy.spec.upstream.port,
        policy.spec.upstream_path()
    );
    let mut sidecar = sidecar_container(cfg, &upstream);
    if cfg.native_sidecar {
        sidecar.restart_policy = Some("Always".into());
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .push(sidecar);
    } else {
        spec.containers.push(sidecar);
    }
    let annotations = out.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(POLICY_ANNOTATION.into(), policy_id.clone());
    annotations.insert(VERSION_ANNOTATION.into(), cfg.version.clone());
    for (k, v) in [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", cfg.admin_port.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
    ] {
        // An app's own scrape settings are kept; the chart's PodMonitor scrapes the sidecar too.
        annotations.entry(k.into()).or_insert(v);
    }
    let before =
        serde_json::to_value(pod).expect("serialising a value built in memory cannot fail");
    let after =
        serde_json::to_value(&out).expect("serialising a value built in memory cannot fail");
    Mutation::Inject {
        patch: json_patch::diff(&before, &after),
        policy: policy_id,
    }
}

/// Whether a pod carries the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carried {
    /// No container of the sidecar's name.
    None,
    /// The sidecar mcp-warden writes for this policy.
    Ours,
    /// A container of that name that is not it, and why.
    Foreign(String),
}

/// Whether `pod` carries the sidecar for `policy`: a container named [`CONTAINER`] running the
/// sidecar against this policy's ConfigMap and upstream, and the annotation naming the policy.
/// With `cfg` (the webhook) it must also be exactly what this controller writes (image, args,
/// ports); without (counting pods, which may run an older version) its arguments and policy
/// volume must be right.
pub fn sidecar_state(pod: &Pod, policy: &McpPolicy, cfg: Option<&InjectConfig>) -> Carried {
    let Some(spec) = pod.spec.as_ref() else {
        return Carried::None;
    };
    let Some(found) = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == CONTAINER)
    else {
        return Carried::None;
    };
    let ns = policy.metadata.namespace.as_deref().unwrap_or("default");
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    let id = format!("{ns}/{name}");
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POLICY_ANNOTATION));
    if annotated != Some(&id) {
        return Carried::Foreign(format!("no {POLICY_ANNOTATION} annotation naming {id}"));
    }
    let upstream = format!(
        "http://127.0.0.1:{}{}",
        policy.spec.upstream.port,
        policy.spec.upstream_path()
    );
    let args = found.args.as_deref().unwrap_or_default();
    let policy_file = format!("{MOUNT_PATH}/{POLICY_FILE}");
    let head = [
        "sidecar",
        "--policy",
        policy_file.as_str(),
        "--upstream",
        upstream.as_str(),
    ];
    if found.command.is_some() || args.len() < head.len() || args[..head.len()] != head {
        return Carried::Foreign("its command or arguments are not the sidecar's".into());
    }
    let mounted = found
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == VOLUME && m.mount_path == MOUNT_PATH && m.sub_path.is_none());
    let volume_ok = spec.volumes.iter().flatten().any(|v| {
        v.name == VOLUME
            && v.config_map
                .as_ref()
                .is_some_and(|c| c.name == configmap_name(name))
    });
    if !mounted || !volume_ok {
        return Carried::Foreign(format!(
            "it does not read the policy from ConfigMap {}",
            configmap_name(name)
        ));
    }
    if let Some(cfg) = cfg {
        let want = sidecar_container(cfg, &upstream);
        if found.image != want.image || found.args != want.args || found.ports != want.ports {
            return Carried::Foreign(
                "its image, arguments or ports differ from the sidecar this controller writes"
                    .into(),
            );
        }
    }
    Carried::Ours
}

/// The policy that applies to the pod: of those whose selector matches (and are not being
/// deleted), the oldest; ties broken by name.
pub fn selecting_policy<'p>(pod: &Pod, policies: &'p [McpPolicy]) -> Option<&'p McpPolicy> {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.as_deref();
    policies
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| ns.is_none() || p.metadata.namespace.as_deref() == ns)
        .filter(|p| selector_matches(&p.spec.pod_selector, &labels))
        .min_by(|a, b| {
            let key = |p: &McpPolicy| {
                (
                    p.metadata.creation_timestamp.clone().map(|t| t.0),
                    p.metadata.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        })
}

/// Standard label-selector semantics; an empty selector matches every pod.
pub fn selector_matches(sel: &PodSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match (e.operator, labels.get(&e.key)) {
            (SelectorOperator::In, Some(v)) => values.contains(v),
            (SelectorOperator::In, None) => false,
            (SelectorOperator::NotIn, Some(v)) => !values.contains(v),
            (SelectorOperator::NotIn, None) => true,
            (SelectorOperator::Exists, found) => found.is_some(),
            (SelectorOperator::DoesNotExist, found) => found.is_none(),
        }
    });
    labels_ok && exprs_ok
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

fn sidecar_container(cfg: &InjectConfig, upstream: &str) -> Container {
    let http_probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ADMIN_PORT_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    };
    let policy_file = format!("{MOUNT_PATH}/{POLICY_FILE}");
    Container {
        name: CONTAINER.into(),
        image: Some(cfg.image.clone()),
        image_pull_policy: cfg.image_pull_policy.clone(),
        args: Some(
            [
                "sidecar",
                "--policy",
                &policy_file,
                "--upstream",
                upstream,
                "--listen",
                &format!("0.0.0.0:{}", cfg.proxy_port),
                "--admin-listen",
                &format!("0.0.0.0:{}", cfg.admin_port),
            ]
            .map(String::from)
            .to_vec(),
        ),
        ports: Some(vec![
            ContainerPort {
                name: Some(MCP_PORT_NAME.into()),
                container_port: cfg.proxy_port.into(),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some(ADMIN_PORT_NAME.into()),
                container_port: cfg.admin_port.into(),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        readiness_probe: Some(http_probe("/readyz", 2)),
        liveness_probe: Some(http_probe("/livez", 10)),
        resources: Some(cfg.resources.clone()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(cfg.run_as_user),
            run_as_group: Some(cfg.run_as_user),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: VOLUME.into(),
            mount_path: MOUNT_PATH.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    }
}
