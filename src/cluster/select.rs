//! Which McpPolicy selects a pod, and reading one namespace out of a cache.

use crate::crd::{McpPolicy, PodSelector, SelectorOperator};
use k8s_openapi::api::core::v1::Pod;
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
