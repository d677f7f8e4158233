use super::render::*;
use crate::cluster::{POLICY_KEY, POLICY_LABEL};
use crate::crd::build::PolicyBuilder;
use crate::crd::McpPolicy;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{json, Value};

fn policy(spec_extra: Value) -> McpPolicy {
    PolicyBuilder::new("notebooks", "jupyter")
        .metadata(json!({"uid": "11111111-2222-3333-4444-555555555555"}))
        .spec(json!({"tools": {"run_cell": {}}}))
        .spec(spec_extra)
        .build()
}

fn pod(name: &str, labels: Value, containers: Value, annotations: Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "notebooks", "labels": labels, "annotations": annotations},
                                  "spec": {"containers": containers}}))
    .unwrap()
}

/// A pod the webhook injected for [`policy`] at sidecar `version`.
fn injected_pod(name: &str, version: &str) -> Pod {
    use crate::cluster::InjectConfig;
    use crate::webhook::inject::{mutate, Mutation};
    let plain = pod(
        name,
        json!({"app": "jupyter-mcp"}),
        json!([{"name": "jupyter-mcp", "ports": [{"name": "metrics", "containerPort": 9090},
                                                  {"name": "mcp", "containerPort": 8888}]}]),
        json!({}),
    );
    let cfg = InjectConfig::new(format!("ghcr.io/mcp-warden/mcp-warden:{version}"), version);
    let Mutation::Inject { patch, .. } = mutate(&plain, &[policy(json!({}))], &cfg) else {
        panic!("the test pod is injected")
    };
    let mut v = serde_json::to_value(&plain).unwrap();
    json_patch::patch(&mut v, &patch).unwrap();
    serde_json::from_value(v).unwrap()
}

fn time(s: &str) -> Time {
    serde_json::from_value(json!(s)).unwrap()
}

#[test]
fn under_first_seen_pinning_the_configmap_carries_the_policys_record() {
    use crate::cluster::SEEN_KEY;
    use crate::tools::seen::FirstSeen;
    let hash = format!("sha256:{}", "a".repeat(64));
    let mut p = policy(json!({"pinning": "firstSeen"}));
    let r = rendered(&p).unwrap();
    let cm = configmap(&p, &r, None, None, &Default::default());
    let empty = FirstSeen::parse(cm.data.as_ref().unwrap()[SEEN_KEY].as_bytes()).unwrap();
    assert!(
        empty.tools.is_empty(),
        "nothing recorded yet: an empty record"
    );
    p.status = Some(crate::crd::McpPolicyStatus {
        first_seen: Some([("run_cell".to_string(), hash.clone())].into()),
        ..Default::default()
    });
    let cm = configmap(&p, &r, None, None, &Default::default());
    let record = FirstSeen::parse(cm.data.as_ref().unwrap()[SEEN_KEY].as_bytes()).unwrap();
    assert_eq!(record.tools["run_cell"], hash);
    let explicit = policy(json!({}));
    let cm = configmap(
        &explicit,
        &rendered(&explicit).unwrap(),
        None,
        None,
        &Default::default(),
    );
    assert!(
        !cm.data.unwrap().contains_key(SEEN_KEY),
        "explicit pins need no record"
    );
}

#[test]
fn the_configmap_holds_the_render_and_is_owned_by_the_policy() {
    let p = policy(json!({}));
    let r = rendered(&p).unwrap();
    let cm = configmap(&p, &r, None, None, &Default::default());
    assert_eq!(cm.metadata.name.as_deref(), Some("jupyter-mcp-warden"));
    assert_eq!(cm.metadata.namespace.as_deref(), Some("notebooks"));
    let owner = &cm.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("McpPolicy", "jupyter", Some(true))
    );
    assert_eq!(owner.uid, "11111111-2222-3333-4444-555555555555");
    let data = &cm.data.as_ref().unwrap()[POLICY_KEY];
    assert_eq!(data.as_bytes(), r.json.as_slice());
    let doc: Value = serde_json::from_str(data).unwrap();
    assert_eq!(doc["name"], "notebooks/jupyter");
    assert_eq!(
        cm.metadata.labels.as_ref().unwrap()[POLICY_LABEL],
        "jupyter"
    );
}

#[test]
fn the_network_policy_admits_every_declared_port_but_the_upstream() {
    let p = policy(json!({}));
    let uninjected = pod(
        "old",
        json!({"app": "jupyter-mcp"}),
        json!([{"name": "app", "ports": [{"name": "mcp", "containerPort": 8888}, {"containerPort": 7000}]}]),
        json!({}),
    );
    let np = network_policy(&p, &[injected_pod("a", "0.1.0"), uninjected], &[9480, 9481]);
    let spec = np.spec.unwrap();
    let ports: Vec<Value> = spec.ingress.unwrap()[0]
        .ports
        .clone()
        .unwrap()
        .into_iter()
        .map(|p| serde_json::to_value(p.port).unwrap())
        .collect();
    assert_eq!(
        ports,
        vec![json!(7000), json!(9090), json!(9480), json!(9481)],
        "8888 is never admitted"
    );
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
    assert_eq!(
        spec.pod_selector.unwrap().match_labels.unwrap()["app"],
        "jupyter-mcp"
    );
    assert_eq!(np.metadata.owner_references.unwrap()[0].name, "jupyter");
}

#[test]
fn services_targeting_the_upstream_port_are_reported() {
    let p = policy(json!({}));
    let svc = |name: &str, selector: Value, ports: Value| -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"selector": selector, "ports": ports}}),
        )
        .unwrap()
    };
    let services = [
        svc(
            "via-sidecar",
            json!({"app": "jupyter-mcp"}),
            json!([{"port": 80, "targetPort": "mcp"}]),
        ),
        svc(
            "numeric",
            json!({"app": "jupyter-mcp"}),
            json!([{"port": 80, "targetPort": 8888}]),
        ),
        svc(
            "implicit",
            json!({"app": "jupyter-mcp"}),
            json!([{"port": 8888}]),
        ),
        svc(
            "other-pods",
            json!({"app": "other"}),
            json!([{"port": 80, "targetPort": 8888}]),
        ),
        svc("headless-no-selector", json!({}), json!([{"port": 8888}])),
    ];
    assert_eq!(
        bypassing_services(&p, &services, &[injected_pod("a", "0.1.0")]),
        vec!["implicit", "numeric"]
    );
}

#[test]
fn the_names_of_services_that_select_the_pods_are_rendered_as_allowed_hosts() {
    let p = policy(json!({"transport": {"allowedHosts": ["mcp.example.com"]}}));
    let svc = |name: &str, selector: Value, ip: &str| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "notebooks"},
            "spec": {"selector": selector, "clusterIP": ip, "clusterIPs": [ip]}}))
        .unwrap()
    };
    let services = [
        svc("jupyter", json!({"app": "jupyter-mcp"}), "10.96.0.7"),
        svc("headless", json!({"app": "jupyter-mcp"}), "None"),
        svc("other", json!({"app": "other"}), "10.96.0.8"),
        svc("v6", json!({"app": "jupyter-mcp"}), "fd00::7"),
    ];
    let hosts = service_hosts(&services, &[injected_pod("a", "0.1.0")], "cluster.local");
    for want in [
        "jupyter",
        "jupyter.notebooks",
        "jupyter.notebooks.svc",
        "jupyter.notebooks.svc.cluster.local",
        "10.96.0.7",
        "headless.notebooks",
        "[fd00::7]",
    ] {
        assert!(hosts.contains(&want.to_string()), "{want}: {hosts:?}");
    }
    assert!(
        !hosts
            .iter()
            .any(|h| h.starts_with("other") || h == "None" || h == "10.96.0.8"),
        "{hosts:?}"
    );
    let r = rendered_with_hosts(&p, &hosts).unwrap();
    let doc: Value = serde_json::from_slice(&r.json).unwrap();
    let allowed = doc["transport"]["allowed_hosts"].as_array().unwrap();
    assert_eq!(
        allowed[0], "mcp.example.com",
        "the policy's own hosts come first"
    );
    assert_eq!(allowed.len(), hosts.len() + 1);
    let compiled = crate::policy::compile_file(&doc).unwrap();
    assert!(compiled
        .transport
        .allowed_hosts
        .contains(&"jupyter.notebooks.svc".to_string()));
    assert_eq!(
        rendered_with_hosts(&p, &[]).unwrap().hash,
        rendered(&p).unwrap().hash
    );
}

#[test]
fn pods_are_counted_matched_injected_and_outdated() {
    let p = policy(json!({}));
    let plain = pod(
        "plain",
        json!({"app": "jupyter-mcp"}),
        json!([{"name": "app"}]),
        json!({}),
    );
    let unrelated = pod(
        "x",
        json!({"app": "other"}),
        json!([{"name": "app"}]),
        json!({}),
    );
    let mut impostor = injected_pod("c", "0.2.0");
    impostor
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove("mcpwarden.dev/policy");
    let named_like_the_sidecar = pod(
        "d",
        json!({"app": "jupyter-mcp"}),
        json!([{"name": "mcp-warden"}]),
        json!({"mcpwarden.dev/policy": "notebooks/jupyter"}),
    );
    let pods = [
        injected_pod("a", "0.1.0"),
        injected_pod("b", "0.2.0"),
        plain,
        unrelated,
        impostor,
        named_like_the_sidecar,
    ];
    assert_eq!(
        pod_counts(&p, &pods, "0.2.0"),
        (5, 2, 1),
        "a container with the sidecar's name is not an injection"
    );
    assert!(older("0.9.1", "0.10.0") && !older("0.10.0", "0.9.1") && !older("1.2.3", "1.2.3"));
    assert!(older("0.1.0-rc1", "0.2.0"));
}

#[test]
fn last_transition_time_moves_only_when_the_status_changes() {
    let mut conds: Vec<Condition> = Vec::new();
    set_condition(
        &mut conds,
        cond::READY,
        true,
        cond::RENDERED,
        "rendered".into(),
        Some(1),
        time("2026-01-01T00:00:00Z"),
    );
    set_condition(
        &mut conds,
        cond::READY,
        true,
        cond::RENDERED,
        "rendered again".into(),
        Some(2),
        time("2026-01-01T00:05:00Z"),
    );
    assert_eq!(conds.len(), 1);
    assert_eq!(conds[0].last_transition_time, time("2026-01-01T00:00:00Z"));
    assert_eq!(
        (conds[0].message.as_str(), conds[0].observed_generation),
        ("rendered again", Some(2))
    );
    set_condition(
        &mut conds,
        cond::READY,
        false,
        cond::INVALID_POLICY,
        "bad regex".into(),
        Some(3),
        time("2026-01-01T00:09:00Z"),
    );
    assert_eq!(conds[0].last_transition_time, time("2026-01-01T00:09:00Z"));
    assert_eq!(
        (conds[0].status.as_str(), conds[0].reason.as_str()),
        ("False", cond::INVALID_POLICY)
    );
    set_condition(
        &mut conds,
        cond::SERVICE_BYPASS,
        false,
        cond::NO_BYPASS,
        String::new(),
        Some(3),
        time("2026-01-01T00:09:00Z"),
    );
    assert_eq!(conds.len(), 2);
}

#[test]
fn an_invalid_policy_does_not_render() {
    let p = policy(
        json!({"tools": {"a": {"denyIf": [{"conditions": [{"path": "args.x", "op": "regex", "value": "("}]}]}}}),
    );
    let e = rendered(&p).unwrap_err();
    assert_eq!(e.0[0].path, "spec.tools.a.denyIf[0].conditions[0].value");
}

mod desired_state {
    use super::*;
    use crate::controller::reconcile::{desired, Seen};
    use crate::controller::{native_supported, parse_version};

    fn at(s: &str) -> Time {
        time(s)
    }

    fn svc(name: &str, target: Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "notebooks"},
            "spec": {"selector": {"app": "jupyter-mcp"}, "ports": [{"port": 80, "targetPort": target}]}}))
        .unwrap()
    }

    /// The desired state of a policy alone in its namespace, with no pods or services.
    fn alone(p: &McpPolicy, when: &str) -> super::super::reconcile::Desired {
        desired(
            p,
            &Seen {
                policies: std::slice::from_ref(p),
                pods: &[],
                services: &[],
                network_policies: &[],
                keys: None,
                admin_keys: None,
            },
            "0.1.0",
            &[],
            at(when),
        )
    }

    /// `desired` for `p` alone in its namespace on 2026-01-01, with the chart's sidecar ports.
    fn desired_alone(
        p: &McpPolicy,
        pods: &[Pod],
        services: &[Service],
        network_policies: &[k8s_openapi::api::networking::v1::NetworkPolicy],
    ) -> super::super::reconcile::Desired {
        desired(
            p,
            &Seen {
                policies: std::slice::from_ref(p),
                pods,
                services,
                network_policies,
                keys: None,
                admin_keys: None,
            },
            "0.1.0",
            &[9480, 9481],
            at("2026-01-01T00:00:00Z"),
        )
    }

    fn cond<'a>(d: &'a super::super::reconcile::Desired, t: &str) -> &'a Condition {
        d.status.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn keys_are_rendered_beside_the_policy_and_a_failed_fetch_keeps_the_last_ones() {
        use super::super::reconcile::SeenKeys;
        let mut p = policy(json!({"tools": {"t": {}},
            "identity": {"serviceAccount": {"audiences": ["mcp-warden"]}}}));
        let with = |p: &McpPolicy, keys: SeenKeys| {
            desired(
                p,
                &Seen {
                    policies: std::slice::from_ref(p),
                    pods: &[],
                    services: &[],
                    network_policies: &[],
                    keys: Some(keys),
                    admin_keys: None,
                },
                "0.1.0",
                &[9480, 9481],
                at("2026-01-01T00:00:00Z"),
            )
        };
        let key_data = |d: &super::super::reconcile::Desired| {
            d.configmap
                .as_ref()
                .unwrap()
                .data
                .as_ref()
                .unwrap()
                .get("jwks.json")
                .cloned()
        };
        let d = with(
            &p,
            SeenKeys {
                fetched: Ok("{\"keys\":1}"),
                rendered: None,
            },
        );
        assert_eq!(key_data(&d).as_deref(), Some("{\"keys\":1}"));
        assert_eq!(cond(&d, "KeysUnavailable").status, "False");
        assert!(d.events.iter().all(|e| !e.warning));

        p.status = Some(d.status.clone());
        let d = with(
            &p,
            SeenKeys {
                fetched: Err("HTTP 503"),
                rendered: Some("{\"keys\":1}"),
            },
        );
        assert_eq!(
            key_data(&d).as_deref(),
            Some("{\"keys\":1}"),
            "the last good keys stay"
        );
        let c = cond(&d, "KeysUnavailable");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "FetchFailed")
        );
        assert!(
            c.message.contains("HTTP 503") && c.message.contains("keep"),
            "{}",
            c.message
        );
        assert!(d
            .events
            .iter()
            .any(|e| e.warning && e.reason == "KeysUnavailable"));

        let d = with(
            &p,
            SeenKeys {
                fetched: Err("refused"),
                rendered: None,
            },
        );
        assert_eq!(key_data(&d), None);
        assert!(cond(&d, "KeysUnavailable")
            .message
            .contains("refuse every token"));
    }

    #[test]
    fn a_valid_policy_is_ready_with_its_render_counts_and_hash() {
        let mut p = policy(json!({}));
        p.metadata.generation = Some(3);
        let pods = [injected_pod("a", "0.1.0"), injected_pod("b", "0.0.9")];
        let d = desired_alone(&p, &pods, &[], &[]);
        let r = rendered(&p).unwrap();
        assert_eq!(d.status.policy_hash.as_deref(), Some(r.hash.as_str()));
        assert_eq!(d.status.observed_generation, Some(3));
        assert_eq!(
            (
                d.status.matched_pods,
                d.status.injected_pods,
                d.status.outdated_pods
            ),
            (Some(2), Some(2), Some(1))
        );
        assert_eq!(d.status.tool_count, Some(1));
        let ready = cond(&d, cond::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", cond::RENDERED)
        );
        assert_eq!(ready.observed_generation, Some(3));
        assert_eq!(cond(&d, cond::CONFLICT).status, "False");
        assert_eq!(cond(&d, cond::SERVICE_BYPASS).status, "False");
        assert_eq!(
            d.configmap.as_ref().unwrap().data.as_ref().unwrap()[POLICY_KEY].as_bytes(),
            r.json.as_slice()
        );
        assert!(
            d.network_policy.is_some(),
            "isolation defaults to NetworkPolicy"
        );
        assert_eq!(
            d.events.iter().map(|e| e.reason).collect::<Vec<_>>(),
            vec!["Rendered"]
        );
    }

    #[test]
    fn an_invalid_edit_keeps_the_last_render_and_says_why() {
        let good = policy(json!({}));
        let first = alone(&good, "2026-01-01T00:00:00Z");
        let mut bad = policy(
            json!({"tools": {"run_cell": {"denyIf": [{"conditions": [{"path": "args.code", "op": "regex", "value": "(oops"}]}]}}}),
        );
        bad.status = Some(first.status.clone());
        bad.metadata.generation = Some(2);
        let d = alone(&bad, "2026-01-02T00:00:00Z");
        assert!(
            d.configmap.is_none(),
            "an invalid policy must not overwrite the render"
        );
        assert_eq!(
            d.status.policy_hash, first.status.policy_hash,
            "the hash of the last valid render stays"
        );
        let ready = cond(&d, cond::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", cond::INVALID_POLICY)
        );
        // The message names each field once, from `spec.` (it once read `spec.spec.tools…`).
        let compiled = bad.spec.compile().unwrap_err();
        assert_eq!(compiled.0.len(), 1);
        assert_eq!(
            compiled.0[0].path,
            "spec.tools.run_cell.denyIf[0].conditions[0].value"
        );
        assert_eq!(
            ready.message,
            format!(
                "the policy does not compile; sidecars keep the last valid render: \
                 spec.tools.run_cell.denyIf[0].conditions[0].value: {}",
                compiled.0[0].message
            )
        );
        assert_eq!(ready.last_transition_time, at("2026-01-02T00:00:00Z"));
        assert_eq!(d.events.len(), 1);
        assert!(d.events[0].warning, "InvalidPolicy is a warning");
        // Reconciling the same invalid policy again records no new Event and keeps the time.
        bad.status = Some(d.status.clone());
        let again = alone(&bad, "2026-01-03T00:00:00Z");
        assert!(again.events.is_empty());
        assert_eq!(
            cond(&again, cond::READY).last_transition_time,
            at("2026-01-02T00:00:00Z")
        );
        assert_eq!(again.status, d.status);
    }

    #[test]
    fn the_younger_of_two_overlapping_policies_reports_conflict() {
        let mut old = policy(json!({}));
        old.metadata.name = Some("old".into());
        old.metadata.uid = Some("u-old".into());
        old.metadata.creation_timestamp = Some(at("2025-01-01T00:00:00Z"));
        let mut young = policy(json!({}));
        young.metadata.creation_timestamp = Some(at("2026-01-01T00:00:00Z"));
        let all = [old.clone(), young.clone()];
        let pods = [injected_pod("a", "0.1.0")];
        let d = desired(
            &young,
            &Seen {
                policies: &all,
                pods: &pods,
                services: &[],
                network_policies: &[],
                keys: None,
                admin_keys: None,
            },
            "0.1.0",
            &[],
            at("2026-02-01T00:00:00Z"),
        );
        let c = cond(&d, cond::CONFLICT);
        assert_eq!(c.status, "True");
        assert!(c.message.contains("old"), "{}", c.message);
        assert!(d.events.iter().any(|e| e.reason == cond::CONFLICT));
        let d_old = desired(
            &old,
            &Seen {
                policies: &all,
                pods: &pods,
                services: &[],
                network_policies: &[],
                keys: None,
                admin_keys: None,
            },
            "0.1.0",
            &[],
            at("2026-02-01T00:00:00Z"),
        );
        assert_eq!(cond(&d_old, cond::CONFLICT).status, "False");
    }

    #[test]
    fn another_network_policy_that_admits_the_upstream_port_makes_isolation_ineffective() {
        use k8s_openapi::api::networking::v1::NetworkPolicy;
        let p = policy(json!({"isolation": "NetworkPolicy"}));
        let pods = [injected_pod("a", "0.1.0")];
        let np = |name: &str, spec: Value| -> NetworkPolicy {
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "notebooks"}, "spec": spec}),
            )
            .unwrap()
        };
        let nps = [
            np(
                "allow-same-namespace",
                json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
            ),
            np(
                "metrics-only",
                json!({"podSelector": {}, "ingress": [{"ports": [{"port": 9090}]}]}),
            ),
            np(
                "range",
                json!({"podSelector": {"matchLabels": {"app": "jupyter-mcp"}},
                               "ingress": [{"ports": [{"port": 8000, "endPort": 9000}]}]}),
            ),
            np(
                "other-pods",
                json!({"podSelector": {"matchLabels": {"app": "other"}}, "ingress": [{}]}),
            ),
            np(
                "egress-only",
                json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}),
            ),
            np(
                "deny-all",
                json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            ),
        ];
        assert_eq!(
            reopening_network_policies(&p, &nps, &pods),
            vec!["allow-same-namespace", "range"]
        );
        let mut ours = p.clone();
        ours.metadata.name = Some("jupyter".into());
        let rendered = network_policy(&ours, &pods, &[9480, 9481]);
        assert!(
            reopening_network_policies(&p, &[rendered], &pods).is_empty(),
            "the controller's own is not counted"
        );
        let d = desired_alone(&p, &pods, &[], &nps);
        let c = cond(&d, cond::ISOLATION_INEFFECTIVE);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", cond::OTHER_POLICY_ADMITS)
        );
        assert!(
            c.message.contains("allow-same-namespace, range") && c.message.contains("port 8888"),
            "{}",
            c.message
        );
        assert!(d
            .events
            .iter()
            .any(|e| e.warning && e.reason == cond::ISOLATION_INEFFECTIVE));
        let d = desired_alone(&p, &pods, &[], &nps[1..2]);
        assert_eq!(cond(&d, cond::ISOLATION_INEFFECTIVE).status, "False");
        let off = policy(json!({"isolation": "None"}));
        let d = desired_alone(&off, &pods, &[], &nps);
        assert!(
            d.status
                .conditions
                .iter()
                .all(|c| c.type_ != cond::ISOLATION_INEFFECTIVE),
            "only under isolation"
        );
    }

    #[test]
    fn a_service_around_the_sidecar_is_a_warning_and_isolation_renders_a_network_policy() {
        let p = policy(json!({"isolation": "NetworkPolicy"}));
        let pods = [injected_pod("a", "0.1.0")];
        let services = [svc("direct", json!(8888)), svc("good", json!("mcp"))];
        let d = desired_alone(&p, &pods, &services, &[]);
        let c = cond(&d, cond::SERVICE_BYPASS);
        assert_eq!(c.status, "True");
        assert!(
            c.message.contains("direct") && !c.message.contains("good"),
            "{}",
            c.message
        );
        let np = d.network_policy.expect("isolation renders a NetworkPolicy");
        assert_eq!(np.metadata.name.as_deref(), Some("jupyter-mcp-warden"));
    }

    #[test]
    fn isolation_left_unset_is_the_documented_default_network_policy() {
        let pods = [injected_pod("a", "0.1.0")];
        let unset = desired_alone(&policy(json!({})), &pods, &[], &[]);
        let np = unset
            .network_policy
            .as_ref()
            .expect("an McpPolicy without isolation gets the default NetworkPolicy");
        assert_eq!(np.metadata.name.as_deref(), Some("jupyter-mcp-warden"));
        assert_eq!(
            cond(&unset, cond::ISOLATION_INEFFECTIVE).status,
            "False",
            "the default isolation is checked like an explicit one"
        );
        let none = desired_alone(&policy(json!({"isolation": "None"})), &pods, &[], &[]);
        assert!(
            none.network_policy.is_none(),
            "isolation: None renders none"
        );
    }

    #[test]
    fn native_sidecars_need_1_32_everywhere() {
        assert_eq!(parse_version("v1.33.2"), Some((1, 33)));
        assert_eq!(parse_version("1.32+"), Some((1, 32)));
        assert_eq!(parse_version("garbage"), None);
        assert!(native_supported(
            (1, 33),
            &["v1.32.0".into(), "v1.34.1".into()]
        ));
        assert!(!native_supported((1, 31), &[]));
        assert!(!native_supported(
            (1, 33),
            &["v1.32.0".into(), "v1.31.9".into()]
        ));
        assert!(!native_supported((1, 33), &["unknown".into()]));
        assert!(
            native_supported((1, 32), &[]),
            "no nodes yet: the API server decides"
        );
    }
}

mod ca_bundle {
    use crate::controller::certs::ca_bundle_patch;
    use k8s_openapi::ByteString;
    use serde_json::json;

    #[test]
    fn only_drifted_webhooks_are_repatched_each_guarded_by_its_name() {
        let bundle = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n";
        let good = Some(ByteString(bundle.as_bytes().to_vec()));
        assert!(ca_bundle_patch(&[("a".into(), good.clone())], bundle).is_none());
        let hooks = [
            ("a".to_string(), good),
            ("b".to_string(), None),
            ("c".to_string(), Some(ByteString(b"stale".to_vec()))),
        ];
        let patch = serde_json::to_value(ca_bundle_patch(&hooks, bundle).unwrap()).unwrap();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(bundle);
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/webhooks/1/name", "value": "b"},
                {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": b64},
                {"op": "test", "path": "/webhooks/2/name", "value": "c"},
                {"op": "add", "path": "/webhooks/2/clientConfig/caBundle", "value": b64},
            ])
        );
    }
}

#[tokio::test]
async fn the_reconcilers_triggers_carry_objects_and_log_watch_errors() {
    use futures_util::StreamExt;
    use kube::runtime::watcher;
    let s = futures_util::stream::iter(vec![
        Ok(1),
        Err(watcher::Error::NoResourceVersion),
        Ok(2),
        Err(watcher::Error::NoResourceVersion),
    ]);
    let out: Vec<_> = super::kept("test", s).collect().await;
    let objects: Vec<i32> = out
        .into_iter()
        .map(|r| r.expect("no error gets through"))
        .collect();
    assert_eq!(objects, vec![1, 2]);
}

#[test]
fn a_lease_round_ends_before_the_lease_could_lapse() {
    use super::leader::renew_deadline;
    use std::time::Duration;
    assert_eq!(
        renew_deadline(Duration::from_secs(15)),
        Duration::from_secs(10)
    );
    assert!(renew_deadline(Duration::from_secs(1)) < Duration::from_secs(1));
    assert_eq!(renew_deadline(Duration::ZERO), Duration::from_millis(500));
}

#[test]
fn the_peer_file_names_the_ready_sidecars_and_counts_every_replica() {
    use crate::peering::PeerEntry;
    let p = policy(json!({}));
    let with_status = |name: &str, ip: Option<&str>, ready: bool| {
        let mut pod = injected_pod(name, "0.1.0");
        pod.status = serde_json::from_value(json!({
            "podIP": ip,
            "containerStatuses": [
                {"name": "jupyter-mcp", "ready": true, "restartCount": 0, "image": "x", "imageID": ""},
                {"name": crate::cluster::CONTAINER, "ready": ready, "restartCount": 0, "image": "x", "imageID": ""},
            ]
        }))
        .unwrap();
        pod
    };
    let mut leaving = with_status("web-3", Some("10.0.0.13"), true);
    leaving.metadata.deletion_timestamp = Some(time("2026-12-06T10:00:00Z"));
    let plain = pod(
        "other",
        json!({"app": "jupyter-mcp"}),
        json!([{"name": "x"}]),
        json!({}),
    );
    let pods = [
        with_status("web-2", Some("10.0.0.12"), true),
        with_status("web-0", Some("10.0.0.10"), true),
        // Not ready yet, or no IP: a replica, not an owner.
        with_status("web-1", Some("10.0.0.11"), false),
        with_status("web-4", None, true),
        // Being deleted, or without the sidecar: neither.
        leaving,
        plain,
    ];
    let f = peer_file(&p, &pods);
    assert_eq!(f.replicas, 4);
    assert_eq!(
        f.peers,
        vec![
            PeerEntry {
                name: "web-0".into(),
                address: "10.0.0.10:9481".into()
            },
            PeerEntry {
                name: "web-2".into(),
                address: "10.0.0.12:9481".into()
            },
        ]
    );
    // Rendered into the ConfigMap the sidecars mount.
    let cm = configmap(&p, &rendered(&p).unwrap(), None, None, &f);
    let text = &cm.data.as_ref().unwrap()[crate::cluster::PEERS_KEY];
    assert_eq!(
        serde_json::from_str::<crate::peering::PeerFile>(text).unwrap(),
        f
    );
}
