//! McpApprovals stamped with who decided, rendered for their pod, and deleted after the retention.

use super::*;

/// An McpApproval as the controller makes it from a sidecar's report, for `policy` in `ns`.
fn approval_object(
    ns: &str,
    policy: &str,
    session: &str,
    requested_at: u64,
    ttl: u64,
) -> McpApproval {
    let arguments = format!("{{\"session_id\":\"{session}\"}}");
    let p = Pending {
        id: approval_id(
            &format!("{ns}/{policy}"),
            "clear_session",
            &mcp_warden::policy::sha256_hex(arguments.as_bytes()),
            "system:serviceaccount:agents:bot",
        ),
        policy: format!("{ns}/{policy}"),
        tool: "clear_session".into(),
        arguments_sha256: mcp_warden::policy::sha256_hex(arguments.as_bytes()),
        arguments: Some(arguments),
        identity: "system:serviceaccount:agents:bot".into(),
        requested_at,
        uses: 1,
        ttl_seconds: ttl,
        tool_label: String::new(),
    };
    mcp_warden::controller::approvals::new_approval(ns, policy, "bot-0", &p)
}

#[tokio::test]
async fn approvals_are_stamped_rendered_for_their_pod_and_deleted_after_the_retention() {
    let Some((client, _serial)) = cluster_alone().await else {
        return;
    };
    let env = Env::new(client.clone(), "appr").await;
    let on = env.on.clone();
    let (_controller, _admin) = env
        .controller(&[
            "--approvals-poll-seconds",
            "1",
            "--approval-retention-seconds",
            "3",
        ])
        .await;
    let policies: Api<McpPolicy> = Api::namespaced(client.clone(), &on);
    let p: McpPolicy = serde_json::from_value(
        PolicyBuilder::new(&on, "interp")
            .spec(json!({"tools": {"clear_session": {"action": "require_approval"}}}))
            .manifest(),
    )
    .unwrap();
    policies.create(&PostParams::default(), &p).await.unwrap();
    // The admin API's keys: the cluster's, naming the controller's ServiceAccount.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &on);
    let admin = wait_for("admin.json in the ConfigMap", 30, || {
        let cms = cms.clone();
        async move {
            let cm = cms.get_opt("interp-mcp-warden").await.ok()??;
            cm.data?.get("admin.json").cloned()
        }
    })
    .await;
    let admin: Value = serde_json::from_str(&admin).unwrap();
    assert_eq!(
        admin["subject"],
        format!("system:serviceaccount:{}:mcp-warden", env.sys)
    );
    assert!(!admin["keys"].as_array().unwrap().is_empty());

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let approvals: Api<McpApproval> = Api::namespaced(client.clone(), &on);
    let live = approval_object(&on, "interp", "default", now, 3600);
    let lapsed = approval_object(&on, "interp", "old", now - 7200, 3600);
    for a in [&live, &lapsed] {
        approvals.create(&PostParams::default(), a).await.unwrap();
    }
    // A decision with a forged decidedBy: the webhook stamps the real user.
    let decided = approvals
        .patch(
            &live.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"decision": "Approved", "decidedBy": "someone-else"}})),
        )
        .await
        .expect("the admin may approve");
    let by = decided.spec.decided_by.clone().unwrap();
    assert_ne!(by, "someone-else");
    assert!(decided.spec.decided_at.is_some());
    // Rendered for its pod, and its status moves on.
    let file = wait_for("approvals.json with the approval", 30, || {
        let cms = cms.clone();
        async move {
            let cm = cms.get_opt("interp-mcp-warden").await.ok()??;
            let text = cm.data?.get("approvals.json")?.clone();
            let v: Value = serde_json::from_str(&text).ok()?;
            (v["approvals"].as_array()?.len() == 1).then_some(v)
        }
    })
    .await;
    assert_eq!(file["approvals"][0]["id"], live.spec.approval_id.as_str());
    assert_eq!(file["approvals"][0]["pod"], "bot-0");
    assert_eq!(file["approvals"][0]["uses"], 1);
    let got = approvals.get(&live.name_any()).await.unwrap();
    assert_eq!(got.status.unwrap().phase, Some(ApprovalPhase::Approved));
    // The reconciler's later writes keep the approvals key (separate field managers).
    policies
        .patch(
            "interp",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"tools": {"list_sessions": {}}}})),
        )
        .await
        .unwrap();
    wait_for("the new render beside the approvals", 30, || {
        let cms = cms.clone();
        async move {
            let d = cms.get_opt("interp-mcp-warden").await.ok()??.data?;
            (d.get("policy.json")?.contains("list_sessions") && d.contains_key("approvals.json"))
                .then_some(())
        }
    })
    .await;
    // The lapsed request expires, and is deleted once the retention has passed.
    let name = lapsed.name_any();
    wait_for("the lapsed request Expired", 30, || {
        let approvals = approvals.clone();
        let name = name.clone();
        async move {
            let a = approvals.get(&name).await.ok()?;
            (a.status?.phase == Some(ApprovalPhase::Expired)).then_some(())
        }
    })
    .await;
    wait_gone("the expired McpApproval", &approvals, &name, 30).await;
    // A decision on it would have been refused; on the live one a change of decision is.
    let flip = approvals
        .patch(
            &live.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"decision": "Denied"}})),
        )
        .await
        .unwrap_err();
    assert!(flip.to_string().contains("is final"), "{flip}");
    env.cleanup().await;
}
