//! Which McpPolicy selects a pod, and reading one namespace out of a cache.

use crate::crd::{McpPolicy, PodSelector, SelectorOperator};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::runtime::reflector::Store;
use std::collections::BTreeMap;

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
    let op = |o: SelectorOperator| match o {
        SelectorOperator::In => "In",
        SelectorOperator::NotIn => "NotIn",
        SelectorOperator::Exists => "Exists",
        SelectorOperator::DoesNotExist => "DoesNotExist",
    };
    matches(
        sel.match_labels.as_ref(),
        sel.match_expressions.iter().flatten().map(|e| {
            (
                op(e.operator),
                e.key.as_str(),
                e.values.as_deref().unwrap_or_default(),
            )
        }),
        labels,
    )
}

/// The same for a Kubernetes `LabelSelector` (a NetworkPolicy's); an unknown operator matches
/// nothing.
pub fn label_selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    matches(
        sel.match_labels.as_ref(),
        sel.match_expressions.iter().flatten().map(|e| {
            (
                e.operator.as_str(),
                e.key.as_str(),
                e.values.as_deref().unwrap_or_default(),
            )
        }),
        labels,
    )
}

/// Label-selector semantics over `(operator, key, values)` requirements.
fn matches<'s>(
    match_labels: Option<&BTreeMap<String, String>>,
    mut requirements: impl Iterator<Item = (&'s str, &'s str, &'s [String])>,
    labels: &BTreeMap<String, String>,
) -> bool {
    let by_label = match_labels
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    by_label
        && requirements.all(|(op, key, values)| match (op, labels.get(key)) {
            ("In", Some(v)) => values.contains(v),
            ("NotIn", Some(v)) => !values.contains(v),
            ("NotIn", None) | ("DoesNotExist", None) => true,
            ("Exists", Some(_)) => true,
            _ => false,
        })
}

/// The objects of one namespace in a cache (the webhook's McpPolicies, the reconciler's
/// services and NetworkPolicies).
pub fn in_namespace<K>(store: &Store<K>, ns: &str) -> Vec<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state_filter(|o| o.meta().namespace.as_deref() == Some(ns))
        .iter()
        .map(|o| (**o).clone())
        .collect()
}
