//! What the controller and the webhooks share about the cluster: the names and keys of what
//! mcp-warden writes, which McpPolicy selects a pod ([`select`]), what the injected sidecar
//! looks like and how an injected pod is recognised ([`sidecar`]), and the webhook
//! configurations ([`webhooks`]). The controller and the webhooks both build on this module;
//! the webhooks depend on nothing of the controller's.

pub mod select;
pub mod sidecar;
pub mod webhooks;

pub use select::{in_namespace, label_selector_matches, selecting_policy, selector_matches};
pub use sidecar::{sidecar_state, Carried, InjectConfig};

/// The field manager of everything the controller applies.
pub const MANAGER: &str = "mcp-warden";
/// The label on everything the controller creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "mcp-warden");
/// The label naming the McpPolicy a rendered object belongs to.
pub const POLICY_LABEL: &str = "mcpwarden.dev/policy";

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
/// The rendered policy's key in its ConfigMap, and so the file the sidecar reads in the mount.
pub const POLICY_KEY: &str = "policy.json";
/// The ConfigMap key of the key set sidecars verify tokens with (`identity.serviceAccount`,
/// `identity.jwt`).
pub const KEYS_KEY: &str = "jwks.json";
/// The ConfigMap key of the approvals the sidecar honours (written by the controller's approval
/// loop under its own field manager, [`APPROVALS_MANAGER`]).
pub const APPROVALS_KEY: &str = "approvals.json";
/// The ConfigMap key of the policy's record of first-seen tool definitions (`pinning:
/// firstSeen`).
pub const SEEN_KEY: &str = "seen.json";
/// The ConfigMap key of the policy's ready sidecars ([`crate::peering::PeerFile`]).
pub const PEERS_KEY: &str = "peers.json";
/// The Secret (named like the ConfigMap) that holds the key the policy's sidecars authenticate
/// each other with, its key, and where its volume is mounted.
pub const PEER_KEY_KEY: &str = "peer.key";
pub const PEER_VOLUME: &str = "mcp-warden-peer";
pub const PEER_MOUNT_PATH: &str = "/etc/mcp-warden-peer";
/// The ConfigMap key of the keys the sidecar's admin API verifies the controller's token with.
pub const ADMIN_KEYS_KEY: &str = "admin.json";
/// The field manager of the approvals key.
pub const APPROVALS_MANAGER: &str = "mcp-warden-approvals";
/// The container port name Services route to.
pub const MCP_PORT_NAME: &str = "mcp";
/// The sidecar's admin port name (probes, scraping).
pub const ADMIN_PORT_NAME: &str = "mcp-warden-adm";

/// The ConfigMap the controller renders for a policy.
pub fn configmap_name(policy: &str) -> String {
    format!("{policy}-mcp-warden")
}

/// The Secret with the policy's peer key: named like its ConfigMap.
pub fn peer_secret_name(policy: &str) -> String {
    configmap_name(policy)
}
