//! Guarding injected pods after creation. A pod's sidecar image can be changed by UPDATE, and an
//! ephemeral container (`kubectl debug`) shares the pod's network namespace, so it reaches the
//! MCP server on loopback around the sidecar. The validating webhook sees UPDATEs of pods that
//! carry the policy annotation (a match condition sends only those) and refuses what would
//! weaken the gate.

use crate::cluster::{CONTAINER, MCP_PORT_NAME, POLICY_ANNOTATION};
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;

/// What an update of a guarded pod would weaken; each names the pod's McpPolicy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Weakened {
    #[error(
        "pod is guarded by McpPolicy {0}: an ephemeral container would share its network and \
         reach the MCP server around the mcp-warden sidecar. Debug a copy instead \
         (kubectl debug --copy-to=NAME), which the webhook injects like any new pod"
    )]
    EphemeralContainer(String),
    #[error(
        "pod is guarded by McpPolicy {0}: the {POLICY_ANNOTATION} annotation cannot be changed \
         or removed"
    )]
    Annotation(String),
    #[error(
        "pod is guarded by McpPolicy {0}: its mcp-warden sidecar cannot be changed (roll out a \
         new pod instead)"
    )]
    Sidecar(String),
    #[error(
        "pod is guarded by McpPolicy {0}: the \"{MCP_PORT_NAME}\" port must stay on the sidecar"
    )]
    McpPort(String),
}

/// Why an update of a guarded pod is refused, or `Ok` when it keeps the gate as it was.
pub fn check_update(old: &Pod, new: &Pod, sub_resource: Option<&str>) -> Result<(), Weakened> {
    let Some(policy) = old
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POLICY_ANNOTATION))
    else {
        return Ok(());
    };
    let ephemeral = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.ephemeral_containers.as_ref())
            .map_or(0, Vec::len)
    };
    if ephemeral(new) > ephemeral(old) {
        return Err(Weakened::EphemeralContainer(policy.clone()));
    }
    if sub_resource.is_some_and(|s| !s.is_empty()) {
        return Ok(());
    }
    let new_policy = new
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POLICY_ANNOTATION));
    if new_policy != Some(policy) {
        return Err(Weakened::Annotation(policy.clone()));
    }
    let sidecar = |p: &Pod| -> Option<Container> {
        let s = p.spec.as_ref()?;
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .find(|c| c.name == CONTAINER)
            .cloned()
    };
    if sidecar(old) != sidecar(new) {
        return Err(Weakened::Sidecar(policy.clone()));
    }
    let routing = |p: &Pod| -> Vec<(String, Option<i32>)> {
        p.spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .flat_map(|c| {
                c.ports
                    .iter()
                    .flatten()
                    .filter(|port| port.name.as_deref() == Some(MCP_PORT_NAME))
                    .map(|port| (c.name.clone(), Some(port.container_port)))
            })
            .collect()
    };
    if routing(old) != routing(new) {
        return Err(Weakened::McpPort(policy.clone()));
    }
    Ok(())
}

/// Answers a pod UPDATE AdmissionReview (the pod itself or its `ephemeralcontainers`).
pub fn review_update(body: &[u8]) -> (AdmissionReview<DynamicObject>, Option<String>) {
    let req: AdmissionRequest<Pod> = match serde_json::from_slice::<AdmissionReview<Pod>>(body)
        .map_err(|e| e.to_string())
        .and_then(|r| {
            r.try_into()
                .map_err(|e: kube::core::admission::ConvertAdmissionReviewError| e.to_string())
        }) {
        Ok(r) => r,
        Err(e) => {
            let why = format!("unreadable AdmissionReview: {e}");
            return (AdmissionResponse::invalid(&why).into_review(), Some(why));
        }
    };
    let response = AdmissionResponse::from(&req);
    let (Some(old), Some(new)) = (req.old_object.as_ref(), req.object.as_ref()) else {
        return (response.into_review(), None);
    };
    match check_update(old, new, req.sub_resource.as_deref()) {
        Ok(()) => (response.into_review(), None),
        Err(why) => {
            let why = why.to_string();
            (response.deny(&why).into_review(), Some(why))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn guarded() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "annotations": {POLICY_ANNOTATION: "ns/jupyter"}},
            "spec": {"containers": [
                {"name": "app", "image": "app:1", "ports": [{"name": "metrics", "containerPort": 9090}]},
                {"name": CONTAINER, "image": "mcp-warden:0.1.0", "args": ["sidecar"],
                 "ports": [{"name": MCP_PORT_NAME, "containerPort": 9480}]}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn changes_that_weaken_the_gate_are_refused() {
        let old = guarded();
        let mut label = old.clone();
        label.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
        assert_eq!(
            check_update(&old, &label, None),
            Ok(()),
            "other changes pass"
        );
        let mut app_image = old.clone();
        app_image.spec.as_mut().unwrap().containers[0].image = Some("app:2".into());
        assert_eq!(
            check_update(&old, &app_image, None),
            Ok(()),
            "the app may be updated"
        );

        let mut image = old.clone();
        image.spec.as_mut().unwrap().containers[1].image = Some("evil:1".into());
        let policy = || "ns/jupyter".to_string();
        assert_eq!(
            check_update(&old, &image, None),
            Err(Weakened::Sidecar(policy()))
        );
        let mut moved = old.clone();
        let port = moved.spec.as_mut().unwrap().containers[1].ports.take();
        moved.spec.as_mut().unwrap().containers[0].ports = port;
        assert_eq!(
            check_update(&old, &moved, None),
            Err(Weakened::Sidecar(policy())),
            "the sidecar's own ports are part of it"
        );
        let mut second = old.clone();
        second.spec.as_mut().unwrap().containers[0].ports = Some(vec![serde_json::from_value(
            json!({"name": MCP_PORT_NAME, "containerPort": 8888}),
        )
        .unwrap()]);
        assert_eq!(
            check_update(&old, &second, None),
            Err(Weakened::McpPort(policy())),
            "no other container may take the mcp port name"
        );
        let mut unannotated = old.clone();
        unannotated.metadata.annotations = None;
        assert_eq!(
            check_update(&old, &unannotated, None),
            Err(Weakened::Annotation(policy()))
        );
        let mut debug = old.clone();
        debug.spec.as_mut().unwrap().ephemeral_containers = Some(vec![serde_json::from_value(
            json!({"name": "debugger", "image": "busybox"}),
        )
        .unwrap()]);
        let refused = check_update(&old, &debug, Some("ephemeralcontainers"));
        assert_eq!(refused, Err(Weakened::EphemeralContainer(policy())));
        assert!(refused
            .unwrap_err()
            .to_string()
            .contains("kubectl debug --copy-to"));
        let mut unguarded = old.clone();
        unguarded.metadata.annotations = None;
        assert_eq!(
            check_update(&unguarded, &debug, Some("ephemeralcontainers")),
            Ok(())
        );
    }
}
