//! Admission of McpApprovals: who decided is what the API server says, not what the client
//! wrote, and a decision is made once, by someone other than the identity that asked.
//!
//! - `/mutate-approval` stamps `spec.decidedBy` (the request's user) and `spec.decidedAt` when a
//!   decision is made, keeps the stamped values afterwards, and clears values a client sent
//!   without a decision.
//! - `/validate-approval` refuses: a decision in a CREATE (the controller creates requests,
//!   people decide them), a change of what was asked (tool, arguments, identity, pod, …), a
//!   change of a decision once made, and a decision by the identity that asked.
//!
//! Who may decide at all is RBAC on `mcpapprovals` (the chart's `mcp-warden-approver` role).

use crate::crd::approval::{McpApproval, McpApprovalSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use serde_json::json;

/// The request, or why it cannot be read.
fn read(body: &[u8]) -> Result<AdmissionRequest<McpApproval>, String> {
    serde_json::from_slice::<AdmissionReview<McpApproval>>(body)
        .map_err(|e| e.to_string())
        .and_then(|r| {
            r.try_into()
                .map_err(|e: kube::core::admission::ConvertAdmissionReviewError| e.to_string())
        })
        .map_err(|e| format!("unreadable AdmissionReview: {e}"))
}

/// The `/mutate-approval` answer, stamping the decider at `now`.
pub fn mutate(body: &[u8], now: Time) -> AdmissionReview<DynamicObject> {
    let req = match read(body) {
        Ok(r) => r,
        Err(why) => return AdmissionResponse::invalid(why).into_review(),
    };
    let response = AdmissionResponse::from(&req);
    let Some(new) = req.object.as_ref() else {
        return response.into_review();
    };
    let old = req.old_object.as_ref().map(|o| &o.spec);
    let user = req.user_info.username.clone().unwrap_or_default();
    let (by, at) = match (old.and_then(|o| o.decision), new.spec.decision) {
        // A decision already made keeps its stamp (the validating webhook refuses a change).
        (Some(_), _) => (
            old.and_then(|o| o.decided_by.clone()),
            old.and_then(|o| o.decided_at.clone()),
        ),
        (None, Some(_)) => (Some(user), Some(now)),
        (None, None) => (None, None),
    };
    if new.spec.decided_by == by && new.spec.decided_at == at {
        return response.into_review();
    }
    let mut ops = Vec::new();
    for (field, value) in [
        ("decidedBy", by.map(|b| json!(b))),
        ("decidedAt", at.map(|t| json!(t))),
    ] {
        let path = format!("/spec/{field}");
        let present = match field {
            "decidedBy" => new.spec.decided_by.is_some(),
            _ => new.spec.decided_at.is_some(),
        };
        match (value, present) {
            (Some(v), true) => ops.push(json!({"op": "replace", "path": path, "value": v})),
            (Some(v), false) => ops.push(json!({"op": "add", "path": path, "value": v})),
            (None, true) => ops.push(json!({"op": "remove", "path": path})),
            (None, false) => {}
        }
    }
    let patch: json_patch::Patch =
        serde_json::from_value(json!(ops)).expect("the operations are JSON patch operations");
    match response.clone().with_patch(patch) {
        Ok(r) => r.into_review(),
        Err(e) => response
            .deny(format!("cannot build the patch: {e}"))
            .into_review(),
    }
}

/// What was asked: every field the controller writes, which nobody may change.
fn asked(s: &McpApprovalSpec) -> McpApprovalSpec {
    McpApprovalSpec {
        decision: None,
        decided_by: None,
        decided_at: None,
        ..s.clone()
    }
}

/// Why an McpApproval change is refused, if it is.
pub fn refusal(
    operation: &Operation,
    old: Option<&McpApprovalSpec>,
    new: &McpApprovalSpec,
    user: &str,
    now: &Time,
) -> Option<String> {
    if *operation == Operation::Create {
        return new.decision.is_some().then(|| {
            "an McpApproval is created without a decision (the controller creates one per \
             request); decide it by updating spec.decision"
                .to_owned()
        });
    }
    let old = old?;
    if asked(old) != asked(new) {
        return Some(
            "only spec.decision can be changed: what was asked (policy, tool, arguments, \
             identity, pod, times, uses) is fixed"
                .into(),
        );
    }
    match (old.decision, new.decision) {
        (Some(was), now) if now != Some(was) => Some(format!(
            "the decision ({was:?}) was made by {} and is final",
            old.decided_by.as_deref().unwrap_or("someone")
        )),
        (None, Some(_)) if now.0 > new.expires_at.0 => Some(format!(
            "the request lapsed at {} undecided: the agent must make the call again",
            new.expires_at.0
        )),
        (None, Some(_)) if user == new.identity => Some(format!(
            "{user} asked for this call and cannot decide it: another person must approve"
        )),
        (None, Some(_)) if new.decided_by.as_deref() != Some(user) => Some(format!(
            "spec.decidedBy must be the deciding user ({user}): the mutating webhook stamps it"
        )),
        _ => None,
    }
}

/// The `/validate-approval` answer, and the refusal when there is one.
pub fn validate(body: &[u8], now: Time) -> (AdmissionReview<DynamicObject>, Option<String>) {
    let req = match read(body) {
        Ok(r) => r,
        Err(why) => return (AdmissionResponse::invalid(&why).into_review(), Some(why)),
    };
    let response = AdmissionResponse::from(&req);
    let Some(new) = req.object.as_ref() else {
        return (response.into_review(), None);
    };
    let user = req.user_info.username.as_deref().unwrap_or_default();
    match refusal(
        &req.operation,
        req.old_object.as_ref().map(|o| &o.spec),
        &new.spec,
        user,
        &now,
    ) {
        None => (response.into_review(), None),
        Some(why) => (response.deny(&why).into_review(), Some(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::approval::ApprovalDecision;

    fn spec() -> McpApprovalSpec {
        serde_json::from_value(json!({
            "policy": "python-interpreter",
            "tool": "clear_session",
            "arguments": "{\"session_id\":\"default\"}",
            "argumentsHash": "a".repeat(64),
            "identity": "system:serviceaccount:agents:bot",
            "pod": "python-interpreter-0",
            "approvalId": "b".repeat(64),
            "requestedAt": "2026-12-02T10:00:00Z",
            "expiresAt": "2026-12-02T11:00:00Z",
            "uses": 1,
            "ttlSeconds": 3600
        }))
        .unwrap()
    }

    fn review(
        op: &str,
        old: Option<&McpApprovalSpec>,
        new: &McpApprovalSpec,
        user: &str,
    ) -> Vec<u8> {
        let obj = |s: &McpApprovalSpec| {
            json!({"apiVersion": "mcpwarden.dev/v1alpha1", "kind": "McpApproval",
                   "metadata": {"name": "clear-session-bbbbbbbbbbbb", "namespace": "sandbox"},
                   "spec": s})
        };
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-1", "operation": op, "namespace": "sandbox",
                "name": "clear-session-bbbbbbbbbbbb",
                "kind": {"group": "mcpwarden.dev", "version": "v1alpha1", "kind": "McpApproval"},
                "resource": {"group": "mcpwarden.dev", "version": "v1alpha1", "resource": "mcpapprovals"},
                "userInfo": {"username": user},
                "object": obj(new),
                "oldObject": old.map(obj),
            }
        }))
        .unwrap()
    }

    fn patched(review: &AdmissionReview<DynamicObject>, spec: &McpApprovalSpec) -> McpApprovalSpec {
        let v = serde_json::to_value(review).unwrap();
        let mut obj = json!({"spec": spec});
        if let Some(p) = v["response"]["patch"].as_array() {
            let bytes: Vec<u8> = p.iter().map(|b| b.as_u64().unwrap() as u8).collect();
            let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
            json_patch::patch(&mut obj, &patch).unwrap();
        }
        serde_json::from_value(obj["spec"].clone()).unwrap()
    }

    fn now() -> Time {
        Time("2026-12-02T10:05:00Z".parse().unwrap())
    }

    #[test]
    fn the_decider_is_stamped_from_the_request_user_whatever_the_client_wrote() {
        let old = spec();
        let mut new = spec();
        new.decision = Some(ApprovalDecision::Approved);
        new.decided_by = Some("someone-else".into());
        let r = mutate(&review("UPDATE", Some(&old), &new, "alice"), now());
        let got = patched(&r, &new);
        assert_eq!(got.decided_by.as_deref(), Some("alice"));
        assert_eq!(got.decided_at, Some(now()));
        // Later updates keep the stamp.
        let mut later = got.clone();
        later.decided_by = Some("mallory".into());
        let r = mutate(&review("UPDATE", Some(&got), &later, "mallory"), now());
        assert_eq!(patched(&r, &later).decided_by.as_deref(), Some("alice"));
        // Without a decision, a client's stamp is removed.
        let mut undecided = spec();
        undecided.decided_by = Some("alice".into());
        let r = mutate(
            &review(
                "CREATE",
                None,
                &undecided,
                "system:serviceaccount:mcp-warden:mcp-warden",
            ),
            now(),
        );
        assert_eq!(patched(&r, &undecided).decided_by, None);
    }

    #[test]
    fn self_approval_changed_decisions_and_changed_requests_are_refused() {
        let user = "system:serviceaccount:agents:bot";
        let old = spec();
        let mut new = spec();
        new.decision = Some(ApprovalDecision::Approved);
        new.decided_by = Some(user.into());
        let (_, why) = validate(&review("UPDATE", Some(&old), &new, user), now());
        assert!(why.unwrap().contains("cannot decide it"));

        new.decided_by = Some("alice".into());
        let (r, why) = validate(&review("UPDATE", Some(&old), &new, "alice"), now());
        assert_eq!(why, None);
        assert!(serde_json::to_value(&r).unwrap()["response"]["allowed"]
            .as_bool()
            .unwrap());

        let mut flipped = new.clone();
        flipped.decision = Some(ApprovalDecision::Denied);
        let (_, why) = validate(&review("UPDATE", Some(&new), &flipped, "bob"), now());
        assert!(why.unwrap().contains("was made by alice and is final"));
        let mut cleared = new.clone();
        cleared.decision = None;
        assert!(
            validate(&review("UPDATE", Some(&new), &cleared, "bob"), now())
                .1
                .is_some()
        );

        let mut other_args = new.clone();
        other_args.arguments = Some("{\"session_id\":\"all\"}".into());
        let (_, why) = validate(&review("UPDATE", Some(&new), &other_args, "alice"), now());
        assert!(why.unwrap().contains("only spec.decision can be changed"));

        let (_, why) = validate(&review("CREATE", None, &new, "alice"), now());
        assert!(why.unwrap().contains("created without a decision"));
        assert_eq!(validate(&review("CREATE", None, &old, "x"), now()).1, None);
        // A decision whose stamp is not the deciding user (the mutating webhook did not run).
        let mut forged = new.clone();
        forged.decided_by = Some("carol".into());
        assert!(
            validate(&review("UPDATE", Some(&old), &forged, "alice"), now())
                .1
                .is_some()
        );
    }
}
