//! The injected sidecar: the container the webhook writes, and how a pod that carries it is
//! recognised (by the webhook, to stay idempotent and refuse impostors, and by the controller,
//! to count guarded pods).

use super::{
    configmap_name, ADMIN_KEYS_KEY, ADMIN_PORT_NAME, APPROVALS_KEY, CONTAINER, KEYS_KEY,
    MCP_PORT_NAME, MOUNT_PATH, PEERS_KEY, PEER_KEY_KEY, PEER_MOUNT_PATH, PEER_VOLUME,
    POLICY_ANNOTATION, POLICY_KEY, SEEN_KEY, VOLUME,
};
use crate::crd::McpPolicy;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, Pod, Probe, ResourceRequirements, SeccompProfile, SecurityContext,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

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

/// The MCP server the sidecar forwards to: the policy's upstream port and path on loopback.
pub fn upstream_url(policy: &McpPolicy) -> String {
    format!(
        "http://127.0.0.1:{}{}",
        policy.spec.upstream.port,
        policy.spec.upstream_path()
    )
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
    let upstream = upstream_url(policy);
    let args = found.args.as_deref().unwrap_or_default();
    let policy_file = format!("{MOUNT_PATH}/{POLICY_KEY}");
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

pub fn sidecar_container(cfg: &InjectConfig, upstream: &str) -> Container {
    Container {
        name: CONTAINER.into(),
        image: Some(cfg.image.clone()),
        image_pull_policy: cfg.image_pull_policy.clone(),
        args: Some(sidecar_args(cfg, upstream)),
        ports: Some(vec![
            tcp_port(MCP_PORT_NAME, cfg.proxy_port),
            tcp_port(ADMIN_PORT_NAME, cfg.admin_port),
        ]),
        // Approvals name the pod whose sidecar saw the request.
        env: Some(vec![EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        readiness_probe: Some(admin_probe("/readyz", 2)),
        liveness_probe: Some(admin_probe("/livez", 10)),
        resources: Some(cfg.resources.clone()),
        security_context: Some(restricted(cfg.run_as_user)),
        volume_mounts: Some(vec![
            VolumeMount {
                name: VOLUME.into(),
                mount_path: MOUNT_PATH.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: PEER_VOLUME.into(),
                mount_path: PEER_MOUNT_PATH.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

/// The sidecar's command line: the files the controller renders into the mounted ConfigMap
/// (and the peer key's Secret), the upstream, and its two ports.
fn sidecar_args(cfg: &InjectConfig, upstream: &str) -> Vec<String> {
    let file = |key: &str| format!("{MOUNT_PATH}/{key}");
    [
        "sidecar",
        "--policy",
        &file(POLICY_KEY),
        "--upstream",
        upstream,
        "--listen",
        &format!("0.0.0.0:{}", cfg.proxy_port),
        "--admin-listen",
        &format!("0.0.0.0:{}", cfg.admin_port),
        "--jwks",
        &file(KEYS_KEY),
        "--approvals",
        &file(APPROVALS_KEY),
        "--seen",
        &file(SEEN_KEY),
        "--admin-keys",
        &file(ADMIN_KEYS_KEY),
        "--peers",
        &file(PEERS_KEY),
        "--peer-key",
        &format!("{PEER_MOUNT_PATH}/{PEER_KEY_KEY}"),
    ]
    .map(String::from)
    .to_vec()
}

fn tcp_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port.into(),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// A probe of the sidecar's admin port.
fn admin_probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ADMIN_PORT_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// What PodSecurity `restricted` asks of a container, and a read-only root.
fn restricted(uid: i64) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
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
    }
}
