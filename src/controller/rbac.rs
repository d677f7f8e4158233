//! The permissions the controller needs, as one table: the chart's ClusterRole and Role are
//! checked against it, and so is every API call the code makes (`tests/it/rbac.rs`).

/// One RBAC rule: API group, resource, verbs; `namespaced` rules go in the Role of the
/// controller's own namespace, the rest in the ClusterRole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub namespaced: bool,
    /// Only the objects named by `--webhook-config` (RBAC `resourceNames`): the controller
    /// patches its own webhook configurations and no other.
    pub own_names: bool,
}

const fn cluster(
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
) -> Rule {
    Rule {
        group,
        resource,
        verbs,
        namespaced: false,
        own_names: false,
    }
}

const fn own_webhook(resource: &'static str, verbs: &'static [&'static str]) -> Rule {
    Rule {
        own_names: true,
        ..cluster("admissionregistration.k8s.io", resource, verbs)
    }
}

const fn own_namespace(
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
) -> Rule {
    Rule {
        namespaced: true,
        ..cluster(group, resource, verbs)
    }
}

/// Everything the controller does, and nothing more.
pub const RULES: &[Rule] = &[
    // Watched by every replica (webhook cache) and reconciled by the leader.
    cluster("mcpwarden.dev", "mcppolicies", &["list", "watch"]),
    cluster("mcpwarden.dev", "mcppolicies/status", &["patch"]),
    // Rendered policies and isolation, applied server-side in the policies' namespaces.
    cluster(
        "",
        "configmaps",
        &["get", "list", "watch", "patch", "create"],
    ),
    // Approval requests read from sidecars, their status, and their deletion after retention.
    cluster(
        "mcpwarden.dev",
        "mcpapprovals",
        &["list", "watch", "create", "delete"],
    ),
    cluster("mcpwarden.dev", "mcpapprovals/status", &["patch"]),
    cluster(
        "networking.k8s.io",
        "networkpolicies",
        &["list", "watch", "patch", "create", "delete"],
    ),
    // The policies' peer keys: created once, never read (only the sidecars mount them).
    cluster("", "secrets", &["create"]),
    // Counts and warnings.
    cluster("", "pods", &["list", "watch"]),
    cluster("", "services", &["list", "watch"]),
    // Native-sidecar detection reads kubelet versions.
    cluster("", "nodes", &["list"]),
    cluster("events.k8s.io", "events", &["create", "patch"]),
    // caBundle patching of its own configurations only (and, with --webhook-url, applying
    // them).
    own_webhook("mutatingwebhookconfigurations", &["get", "patch"]),
    own_webhook("validatingwebhookconfigurations", &["get", "patch"]),
    // The webhook certificate Secret and the leader Lease.
    own_namespace("", "secrets", &["get", "create", "update"]),
    own_namespace(
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update"],
    ),
];

/// URLs outside the resource API the controller reads (ClusterRole `nonResourceURLs`): the
/// cluster's ServiceAccount issuer and keys, rendered for `identity.serviceAccount`.
pub const NON_RESOURCE_URLS: &[(&str, &[&str])] = &[
    ("/.well-known/openid-configuration", &["get"]),
    ("/openid/v1/jwks", &["get"]),
];

/// What `--webhook-url` mode needs besides [`RULES`]: it registers the webhook configurations
/// itself (in a cluster the chart creates them).
pub const URL_MODE_RULES: &[Rule] = &[
    cluster(
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        &["create"],
    ),
    cluster(
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        &["create"],
    ),
];
