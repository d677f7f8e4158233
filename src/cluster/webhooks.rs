//! The admission webhook configurations, built once: the controller registers them in URL mode
//! and patches their `caBundle`; the chart installs the same (a test holds the two together).

use super::{INJECT_LABEL, MANAGED_BY, NAMESPACE_LABEL};
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
    ServiceReference, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::ByteString;

/// Where the API server reaches the webhooks.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// The in-cluster Service (the chart's).
    Service {
        namespace: String,
        name: String,
        port: i32,
    },
    /// A URL (development and tests outside the cluster); the controller then registers the
    /// webhook configurations itself.
    Url(String),
}

impl Endpoint {
    /// The names the serving certificate must carry.
    pub fn names(&self) -> Vec<String> {
        match self {
            Endpoint::Service {
                namespace, name, ..
            } => service_names(name, namespace),
            Endpoint::Url(url) => {
                let host = url
                    .parse::<http::Uri>()
                    .ok()
                    .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_string()))
                    .unwrap_or_default();
                vec![host]
            }
        }
    }

    pub fn client_config(&self, path: &str, ca_bundle: &str) -> WebhookClientConfig {
        let ca = Some(ByteString(ca_bundle.as_bytes().to_vec()));
        match self {
            Endpoint::Service {
                namespace,
                name,
                port,
            } => WebhookClientConfig {
                ca_bundle: ca,
                service: Some(ServiceReference {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    path: Some(path.into()),
                    port: Some(*port),
                }),
                url: None,
            },
            Endpoint::Url(url) => WebhookClientConfig {
                ca_bundle: ca,
                service: None,
                url: Some(format!("{}{path}", url.trim_end_matches('/'))),
            },
        }
    }
}

/// Only UPDATEs of pods the webhook injected go to `/guard`, so the rest of a namespace's pod
/// updates never wait on (or fail with) the controller.
pub const GUARDED_POD_CONDITION: &str =
    "has(oldObject.metadata.annotations) && 'mcpwarden.dev/policy' in oldObject.metadata.annotations";

/// A namespaced rule.
fn rule(group: &str, version: &str, operations: &[&str], resources: &[&str]) -> RuleWithOperations {
    let strings = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
    RuleWithOperations {
        api_groups: Some(vec![group.into()]),
        api_versions: Some(vec![version.into()]),
        operations: strings(operations),
        resources: strings(resources),
        scope: Some("Namespaced".into()),
    }
}

/// A validating webhook's settings shared by both: fail closed, no side effects, 10 s.
fn validating(client_config: WebhookClientConfig) -> ValidatingWebhook {
    ValidatingWebhook {
        name: String::new(),
        admission_review_versions: vec!["v1".into()],
        client_config,
        failure_policy: Some("Fail".into()),
        side_effects: "None".into(),
        timeout_seconds: Some(10),
        match_policy: Some("Equivalent".into()),
        namespace_selector: None,
        object_selector: None,
        rules: None,
        match_conditions: None,
    }
}

/// The webhook configurations the chart installs, for URL mode: pods in namespaces labelled
/// `mcpwarden.dev/injection=enabled` (never the controller's own), opt-out by pod label, and
/// McpPolicy CREATE/UPDATE.
pub fn webhook_configurations(
    name: &str,
    endpoint: &Endpoint,
    bundle: &str,
    own_namespace: &str,
) -> (MutatingWebhookConfiguration, ValidatingWebhookConfiguration) {
    let namespaces = injection_namespaces(own_namespace);
    let meta = ObjectMeta {
        name: Some(name.into()),
        labels: Some([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into()),
        ..Default::default()
    };
    let m = MutatingWebhookConfiguration {
        metadata: meta.clone(),
        webhooks: Some(mutating_webhooks(endpoint, bundle, namespaces.clone())),
    };
    let v = ValidatingWebhookConfiguration {
        metadata: meta,
        webhooks: Some(validating_webhooks(endpoint, bundle, namespaces)),
    };
    (m, v)
}

/// Namespaces labelled `mcpwarden.dev/injection=enabled`, never kube-system nor the
/// controller's own.
fn injection_namespaces(own_namespace: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some([(NAMESPACE_LABEL.to_string(), "enabled".to_string())].into()),
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "kubernetes.io/metadata.name".into(),
            operator: "NotIn".into(),
            values: Some(vec!["kube-system".into(), own_namespace.into()]),
        }]),
    }
}

/// Injection at pod CREATE (opt-out by pod label), and the stamp of who decided an McpApproval.
fn mutating_webhooks(
    endpoint: &Endpoint,
    bundle: &str,
    namespaces: LabelSelector,
) -> Vec<MutatingWebhook> {
    let object_selector = LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: INJECT_LABEL.into(),
            operator: "NotIn".into(),
            values: Some(vec!["false".into()]),
        }]),
        match_labels: None,
    };
    vec![
        MutatingWebhook {
            name: "inject.mcpwarden.dev".into(),
            admission_review_versions: vec!["v1".into()],
            client_config: endpoint.client_config("/mutate", bundle),
            failure_policy: Some("Fail".into()),
            side_effects: "NoneOnDryRun".into(),
            timeout_seconds: Some(10),
            reinvocation_policy: Some("Never".into()),
            match_policy: Some("Equivalent".into()),
            namespace_selector: Some(namespaces),
            object_selector: Some(object_selector),
            rules: Some(vec![rule("", "v1", &["CREATE"], &["pods"])]),
            match_conditions: None,
        },
        MutatingWebhook {
            name: "approval.mcpwarden.dev".into(),
            admission_review_versions: vec!["v1".into()],
            client_config: endpoint.client_config("/mutate-approval", bundle),
            // Always closed: without the stamp, nobody can tell who decided.
            failure_policy: Some("Fail".into()),
            side_effects: "None".into(),
            timeout_seconds: Some(10),
            reinvocation_policy: Some("Never".into()),
            match_policy: Some("Equivalent".into()),
            namespace_selector: None,
            object_selector: None,
            rules: Some(vec![rule(
                "mcpwarden.dev",
                "v1alpha1",
                &["CREATE", "UPDATE"],
                &["mcpapprovals"],
            )]),
            match_conditions: None,
        },
    ]
}

/// McpPolicy CREATE/UPDATE, updates of guarded pods, and McpApprovals.
fn validating_webhooks(
    endpoint: &Endpoint,
    bundle: &str,
    namespaces: LabelSelector,
) -> Vec<ValidatingWebhook> {
    let validate = ValidatingWebhook {
        name: "validate.mcpwarden.dev".into(),
        rules: Some(vec![rule(
            "mcpwarden.dev",
            "v1alpha1",
            &["CREATE", "UPDATE"],
            &["mcppolicies"],
        )]),
        ..validating(endpoint.client_config("/validate", bundle))
    };
    let guard = ValidatingWebhook {
        name: "guard.mcpwarden.dev".into(),
        namespace_selector: Some(namespaces),
        rules: Some(vec![rule(
            "",
            "v1",
            &["UPDATE"],
            &["pods", "pods/ephemeralcontainers"],
        )]),
        match_conditions: Some(vec![MatchCondition {
            name: "guarded-pods-only".into(),
            expression: GUARDED_POD_CONDITION.into(),
        }]),
        ..validating(endpoint.client_config("/guard", bundle))
    };
    let approval = ValidatingWebhook {
        name: "approval.mcpwarden.dev".into(),
        rules: Some(vec![rule(
            "mcpwarden.dev",
            "v1alpha1",
            &["CREATE", "UPDATE"],
            &["mcpapprovals"],
        )]),
        ..validating(endpoint.client_config("/validate-approval", bundle))
    };
    vec![validate, guard, approval]
}

/// The names a serving certificate for the in-cluster Service carries.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_condition_reads_the_annotation_injection_writes() {
        assert!(GUARDED_POD_CONDITION.contains(&format!("'{}'", super::super::POLICY_ANNOTATION)));
    }
}
