//! The operator end to end: CRD, policies valid and not, an edit, pods injected or refused, deletion.

use super::*;

#[tokio::test]
async fn the_operator_end_to_end_on_a_real_api_server() {
    let Some((client, _serial)) = cluster_alone().await else {
        return;
    };
    let env = Env::new(client.clone(), "e2e").await;
    let (on, off) = (env.on.clone(), env.off.clone());
    let (_controller, _admin) = env.controller(&[]).await;
    env.ca_bundle().await;

    // A valid policy: ConfigMap and status appear.
    let policies: Api<McpPolicy> = Api::namespaced(client.clone(), &on);
    let p: McpPolicy = serde_json::from_value(policy_manifest(&on, "jupyter", json!({}))).unwrap();
    policies
        .create(&PostParams::default(), &p)
        .await
        .expect("a valid McpPolicy is accepted");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &on);
    let first = wait_for("the rendered ConfigMap", 30, || {
        let cms = cms.clone();
        async move { cms.get_opt("jupyter-mcp-warden").await.ok().flatten() }
    })
    .await;
    let doc: Value = serde_json::from_str(&first.data.as_ref().unwrap()["policy.json"]).unwrap();
    assert_eq!(doc["name"], format!("{on}/jupyter"));
    assert_eq!(
        first.metadata.owner_references.as_ref().unwrap()[0].kind,
        "McpPolicy"
    );
    // The controller's writes are narrowed to what it owns (the chart's admission policy):
    // its own ConfigMap was written above, but not another one, created or patched.
    let admin_cms: Api<ConfigMap> = Api::namespaced(client.clone(), &on);
    admin_cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "someone-elses"}, "data": {"k": "v"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let controller_cms: Api<ConfigMap> = Api::namespaced(env.as_controller().await, &on);
    // (The API server loads a new admission policy within seconds: retry until it acts.)
    let err = wait_for("the admission policy to refuse the controller", 30, || {
        let controller_cms = controller_cms.clone();
        async move {
            controller_cms
                .patch(
                    "someone-elses",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"k": "x"}})),
                )
                .await
                .err()
                .filter(|e| e.to_string().contains("may only write"))
        }
    })
    .await;
    assert!(err.to_string().contains("may only write"), "{err}");
    let err = controller_cms
        .patch("someone-elses", &apply(), &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "someone-elses", "labels": {"app.kubernetes.io/managed-by": "mcp-warden"}}, "data": {"k": "x"}})))
        .await
        .expect_err("the controller cannot take over a ConfigMap by labelling it");
    assert!(err.to_string().contains("may only write"), "{err}");
    let err = controller_cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "unlabelled"}})).unwrap(),
        )
        .await
        .expect_err("the controller cannot create an unlabelled ConfigMap");
    assert!(err.to_string().contains("may only write"), "{err}");
    let status = wait_for("status Ready", 30, || {
        let policies = policies.clone();
        async move {
            let p = policies.get("jupyter").await.ok()?;
            let s = p.status?;
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(s)
        }
    })
    .await;
    assert_eq!(status.tool_count, Some(1));
    let hash1 = status.policy_hash.clone().unwrap();

    // An edit is followed.
    policies
        .patch("jupyter", &PatchParams::default(), &Patch::Merge(json!({"spec": {"tools": {"write_file": {"action": "deny", "reason": "read-only"}}}})))
        .await
        .unwrap();
    wait_for("the edit in ConfigMap and status", 30, || {
        let (policies, hash1) = (policies.clone(), hash1.clone());
        async move {
            let s = policies.get("jupyter").await.ok()?.status?;
            (s.policy_hash.as_deref() != Some(hash1.as_str()) && s.tool_count == Some(2))
                .then_some(())
        }
    })
    .await;

    // Refused by the API server's schema, with the field named.
    let bad_schema: McpPolicy = serde_json::from_value(policy_manifest(&on, "bad-schema", json!({"tools": {"run_cell": {"limits": [{"counter": "c", "window": "minute", "max": 0, "scope": "grant"}]}}}))).unwrap();
    let err = policies
        .create(&PostParams::default(), &bad_schema)
        .await
        .expect_err("max 0 is refused");
    assert!(
        err.to_string()
            .contains("spec.tools.run_cell.limits[0].max"),
        "{err}"
    );
    // Refused by /validate: a regex the schema cannot check.
    let bad_regex: McpPolicy = serde_json::from_value(policy_manifest(&on, "bad-regex", json!({"tools": {"run_cell": {"denyIf": [{"conditions": [{"path": "args.code", "op": "regex", "value": "(oops"}]}]}}}))).unwrap();
    let err = policies
        .create(&PostParams::default(), &bad_regex)
        .await
        .expect_err("a bad regex is refused");
    assert!(
        err.to_string()
            .contains("spec.tools.run_cell.denyIf[0].conditions[0].value"),
        "{err}"
    );

    // Injection.
    let pods_on: Api<Pod> = Api::namespaced(client.clone(), &on);
    let created = create_pod(&pods_on, "guarded", json!({"app": "jupyter-mcp"}), true)
        .await
        .unwrap();
    assert!(has_sidecar(&created), "the stored pod runs the sidecar");
    let stored = pods_on.get("guarded").await.unwrap();
    assert!(has_sidecar(&stored));
    assert_eq!(
        stored.metadata.annotations.as_ref().unwrap()["mcpwarden.dev/policy"],
        format!("{on}/jupyter")
    );
    let opted_out = create_pod(
        &pods_on,
        "opted-out",
        json!({"app": "jupyter-mcp", "mcpwarden.dev/inject": "false"}),
        true,
    )
    .await
    .unwrap();
    assert!(!has_sidecar(&opted_out));
    let err = create_pod(&pods_on, "no-port", json!({"app": "jupyter-mcp"}), false)
        .await
        .expect_err("no mcp port is refused");
    assert!(err.to_string().contains("port named \"mcp\""), "{err}");
    let pods_off: Api<Pod> = Api::namespaced(client.clone(), &off);
    let untouched = create_pod(&pods_off, "plain", json!({"app": "jupyter-mcp"}), true)
        .await
        .unwrap();
    assert!(
        !has_sidecar(&untouched),
        "an unlabelled namespace is untouched"
    );
    wait_for("matchedPods and injectedPods", 30, || {
        let policies = policies.clone();
        async move {
            let s = policies.get("jupyter").await.ok()?.status?;
            (s.matched_pods == Some(2) && s.injected_pods == Some(1)).then_some(())
        }
    })
    .await;

    // The injected pod stays guarded: its sidecar cannot be swapped by UPDATE, and no ephemeral
    // container (which would share its network) is added; other updates pass.
    let mut sidecar_swap = pods_on.get("guarded").await.unwrap();
    for c in sidecar_swap.spec.as_mut().unwrap().containers.iter_mut() {
        if c.name == "mcp-warden" {
            c.image = Some("registry.example/not-the-sidecar:1".into());
        }
    }
    let err = pods_on
        .replace("guarded", &PostParams::default(), &sidecar_swap)
        .await
        .expect_err("the sidecar's image cannot be changed");
    assert!(
        err.to_string().contains("sidecar cannot be changed"),
        "{err}"
    );
    let err = pods_on
        .patch_ephemeral_containers(
            "guarded",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"ephemeralContainers": [
                {"name": "debugger", "image": "busybox", "command": ["sh"]}]}})),
        )
        .await
        .expect_err("an ephemeral container is refused on a guarded pod");
    assert!(err.to_string().contains("ephemeral container"), "{err}");
    pods_on
        .patch(
            "guarded",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
        )
        .await
        .expect("an unrelated update of a guarded pod passes");
    // A pod that names its own container like the sidecar is not taken for an injected one.
    let err = create_pod_named_like_the_sidecar(&pods_on).await;
    assert!(err.contains("not the sidecar mcp-warden writes"), "{err}");
    let host_network: Pod = serde_json::from_value(json!({
        "metadata": {"name": "on-the-node", "labels": {"app": "jupyter-mcp"}},
        "spec": {"hostNetwork": true, "containers": [{"name": "app", "image": "registry.example/app:1",
                 "ports": [{"name": "mcp", "containerPort": 8888}]}]}
    }))
    .unwrap();
    let err = pods_on
        .create(&PostParams::default(), &host_network)
        .await
        .expect_err("a selected hostNetwork pod is refused");
    assert!(err.to_string().contains("hostNetwork"), "{err}");

    // A Service that selects the guarded pod: its names and cluster IP become hosts the
    // sidecar accepts (DNS-rebinding protection), rendered into the ConfigMap.
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), &on);
    let svc = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "jupyter"},
                "spec": {"selector": {"app": "jupyter-mcp"}, "ports": [{"port": 80, "targetPort": "mcp"}]}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let ip = svc.spec.and_then(|s| s.cluster_ip).unwrap();
    let hosts = wait_for("the Service's names in the rendered policy", 30, || {
        let cms = cms.clone();
        async move {
            let cm = cms.get_opt("jupyter-mcp-warden").await.ok()??;
            let doc: Value = serde_json::from_str(&cm.data?["policy.json"]).ok()?;
            let hosts = doc["transport"]["allowed_hosts"].as_array()?.clone();
            (!hosts.is_empty()).then_some(hosts)
        }
    })
    .await;
    for want in [
        format!("jupyter.{on}.svc"),
        format!("jupyter.{on}.svc.cluster.local"),
        ip,
    ] {
        assert!(hosts.contains(&json!(want)), "{want} in {hosts:?}");
    }

    // Isolation: the controller renders its own NetworkPolicy (a write the admission policy
    // lets through), and another that admits the upstream port is reported.
    policies
        .patch(
            "jupyter",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"isolation": "NetworkPolicy"}})),
        )
        .await
        .unwrap();
    let nps: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(client.clone(), &on);
    wait_for("the controller's NetworkPolicy", 30, || {
        let nps = nps.clone();
        async move { nps.get_opt("jupyter-mcp-warden").await.ok().flatten() }
    })
    .await;
    nps.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "allow-same-namespace"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}}))
        .unwrap(),
    )
    .await
    .unwrap();
    let message = wait_for("IsolationIneffective", 30, || {
        let policies = policies.clone();
        async move {
            let s = policies.get("jupyter").await.ok()?.status?;
            s.conditions
                .iter()
                .find(|c| c.type_ == "IsolationIneffective" && c.status == "True")
                .map(|c| c.message.clone())
        }
    })
    .await;
    assert!(message.contains("allow-same-namespace"), "{message}");

    // Isolation turned off: the controller deletes its NetworkPolicy (and only its own).
    policies
        .patch(
            "jupyter",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"isolation": "None"}})),
        )
        .await
        .unwrap();
    wait_gone(
        "the controller's NetworkPolicy to be deleted",
        &nps,
        "jupyter-mcp-warden",
        30,
    )
    .await;
    assert!(
        nps.get_opt("allow-same-namespace").await.unwrap().is_some(),
        "another NetworkPolicy is never touched"
    );

    // Deleting the policy: its ConfigMap goes by garbage collection (when the cluster runs a
    // garbage collector; a bare API server has none).
    policies
        .delete("jupyter", &DeleteParams::foreground())
        .await
        .unwrap();
    wait_gone(
        "the ConfigMap to be garbage-collected",
        &cms,
        "jupyter-mcp-warden",
        60,
    )
    .await;

    env.cleanup().await;
}
