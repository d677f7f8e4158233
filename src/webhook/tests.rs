use super::inject::*;
use crate::cluster::*;
use crate::crd::build::PolicyBuilder;
use crate::crd::McpPolicy;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

fn fixture_pod(file: &str) -> Pod {
    let path = format!(
        "{}/tests/fixtures/deployments/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let d: Deployment = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let template = d.spec.unwrap().template;
    let mut meta = template.metadata.unwrap_or_default();
    meta.namespace = d.metadata.namespace;
    Pod {
        metadata: meta,
        spec: template.spec,
        status: None,
    }
}

fn policy(ns: &str, name: &str, labels: Value, created_secs: u32) -> McpPolicy {
    PolicyBuilder::new(ns, name)
        .selecting(labels)
        .spec(json!({"upstream": {"port": 8888, "path": "/mcp"}}))
        .created(created_secs)
        .build()
}

fn chrono_time(secs: i64) -> Time {
    serde_json::from_value(json!(format!(
        "2026-01-01T00:{:02}:{:02}Z",
        secs / 60,
        secs % 60
    )))
    .unwrap()
}

fn cfg() -> InjectConfig {
    InjectConfig::new("ghcr.io/mcp-warden/mcp-warden:0.1.0", "0.1.0")
}

/// Mutates a fixture's pod with one policy selecting `labels`; returns the pod and the answer.
fn mutate_fixture(
    file: &str,
    ns: &str,
    name: &str,
    labels: Value,
    cfg: &InjectConfig,
) -> (Pod, Mutation) {
    let pod = fixture_pod(file);
    let m = mutate(&pod, &[policy(ns, name, labels, 0)], cfg);
    (pod, m)
}

/// Applies the mutation's patch and returns the patched pod.
fn injected(pod: &Pod, m: &Mutation) -> Pod {
    let Mutation::Inject { patch, .. } = m else {
        panic!("expected an injection, got {m:?}")
    };
    let mut v = serde_json::to_value(pod).unwrap();
    json_patch::patch(&mut v, patch).unwrap();
    serde_json::from_value(v).unwrap()
}

fn container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    let s = pod.spec.as_ref().unwrap();
    s.containers
        .iter()
        .chain(s.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap()
}

#[test]
fn a_selected_pod_gets_the_sidecar_and_its_mcp_port() {
    let (pod, m) = mutate_fixture(
        "jupyter-mcp.yaml",
        "notebooks",
        "jupyter",
        json!({"app": "jupyter-mcp"}),
        &cfg(),
    );
    let out = injected(&pod, &m);
    let Mutation::Inject { policy, .. } = &m else {
        unreachable!()
    };
    assert_eq!(policy, "notebooks/jupyter");

    let app = container(&out, "jupyter-mcp");
    let app_ports: Vec<&str> = app
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.name.as_deref())
        .collect();
    assert_eq!(
        app_ports,
        vec!["metrics"],
        "the mcp port moved away from the app"
    );
    assert_eq!(
        app.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .port,
        IntOrString::Int(8888)
    );
    assert_eq!(
        app.liveness_probe
            .as_ref()
            .unwrap()
            .tcp_socket
            .as_ref()
            .unwrap()
            .port,
        IntOrString::Int(8888)
    );

    let side = container(&out, CONTAINER);
    assert_eq!(
        out.spec.as_ref().unwrap().containers.last().unwrap().name,
        CONTAINER,
        "a regular container by default"
    );
    let ports: Vec<(Option<&str>, i32)> = side
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        vec![(Some("mcp"), 9480), (Some("mcp-warden-adm"), 9481)]
    );
    let args = side.args.clone().unwrap();
    assert_eq!(
        args,
        [
            "sidecar",
            "--policy",
            "/etc/mcp-warden/policy.json",
            "--upstream",
            "http://127.0.0.1:8888/mcp",
            "--listen",
            "0.0.0.0:9480",
            "--admin-listen",
            "0.0.0.0:9481",
            "--jwks",
            "/etc/mcp-warden/jwks.json",
            "--approvals",
            "/etc/mcp-warden/approvals.json",
            "--seen",
            "/etc/mcp-warden/seen.json",
            "--admin-keys",
            "/etc/mcp-warden/admin.json",
            "--peers",
            "/etc/mcp-warden/peers.json",
            "--peer-key",
            "/etc/mcp-warden-peer/peer.key"
        ]
    );
    assert_eq!(
        side.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    assert_eq!(
        side.liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/livez")
    );
    let mount = &side.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        (MOUNT_PATH, Some(true))
    );

    let vol = out
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == VOLUME)
        .unwrap();
    let cm = vol.config_map.as_ref().unwrap();
    assert_eq!(
        (cm.name.as_str(), cm.optional),
        ("jupyter-mcp-warden", Some(true))
    );
    // The peer key: its own Secret, mounted by the sidecar alone.
    let spec = out.spec.as_ref().unwrap();
    let peer = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "mcp-warden-peer");
    let secret = peer.unwrap().secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("jupyter-mcp-warden"));
    let mounts_peer = |c: &k8s_openapi::api::core::v1::Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "mcp-warden-peer")
    };
    assert!(mounts_peer(side));
    assert!(!spec
        .containers
        .iter()
        .filter(|c| c.name != CONTAINER)
        .any(mounts_peer));

    let ann = out.metadata.annotations.as_ref().unwrap();
    assert_eq!(ann[POLICY_ANNOTATION], "notebooks/jupyter");
    assert_eq!(ann[VERSION_ANNOTATION], "0.1.0");
    assert_eq!(ann["prometheus.io/port"], "9481");
}

#[test]
fn the_sidecar_passes_podsecurity_restricted() {
    let (pod, m) = mutate_fixture(
        "mcp-python-interpreter.yaml",
        "sandbox",
        "interp",
        json!({"app": "python-interpreter"}),
        &cfg(),
    );
    let sc = container(&injected(&pod, &m), CONTAINER)
        .security_context
        .clone()
        .unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert!(sc.run_as_user.is_some_and(|u| u > 0));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
}

#[test]
fn injection_is_idempotent() {
    let pod = fixture_pod("mcp-python-interpreter.yaml");
    let policies = [policy(
        "sandbox",
        "interp",
        json!({"app": "python-interpreter"}),
        0,
    )];
    let once = injected(&pod, &mutate(&pod, &policies, &cfg()));
    assert_eq!(
        mutate(&once, &policies, &cfg()),
        Mutation::Skip("the sidecar is already injected".into())
    );
}

#[test]
fn a_container_that_only_has_the_sidecars_name_is_refused() {
    let pod = fixture_pod("mcp-python-interpreter.yaml");
    let policies = [policy(
        "sandbox",
        "interp",
        json!({"app": "python-interpreter"}),
        0,
    )];
    let refused = |p: &Pod| match mutate(p, &policies, &cfg()) {
        Mutation::Refuse(why) => why,
        other => panic!("expected a refusal, got {other:?}"),
    };
    // The app names one of its own containers like the sidecar, hoping to be skipped.
    let mut named = pod.clone();
    named.spec.as_mut().unwrap().containers[0].name = CONTAINER.into();
    assert!(refused(&named).contains("not the sidecar mcp-warden writes"));
    // An injected pod whose sidecar was changed (another image, other arguments) is foreign.
    let once = injected(&pod, &mutate(&pod, &policies, &cfg()));
    let mut other_image = once.clone();
    let s = other_image.spec.as_mut().unwrap();
    s.containers
        .iter_mut()
        .find(|c| c.name == CONTAINER)
        .unwrap()
        .image = Some("evil:1".into());
    assert!(refused(&other_image).contains("image, arguments or ports"));
    let mut other_args = once.clone();
    let s = other_args.spec.as_mut().unwrap();
    let c = s
        .containers
        .iter_mut()
        .find(|c| c.name == CONTAINER)
        .unwrap();
    c.args = Some(vec![
        "sidecar".into(),
        "--policy".into(),
        "/tmp/allow-all.yaml".into(),
    ]);
    assert!(refused(&other_args).contains("arguments"));
    // Without the annotation naming the policy, it is not this policy's sidecar either.
    let mut unannotated = once.clone();
    unannotated
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .remove(POLICY_ANNOTATION);
    assert!(refused(&unannotated).contains(POLICY_ANNOTATION));
    assert_eq!(
        sidecar_state(&once, &policies[0], Some(&cfg())),
        Carried::Ours
    );
    assert_eq!(
        sidecar_state(&pod, &policies[0], Some(&cfg())),
        Carried::None
    );
}

#[test]
fn a_selected_host_network_pod_is_refused() {
    let mut pod = fixture_pod("mcp-python-interpreter.yaml");
    pod.spec.as_mut().unwrap().host_network = Some(true);
    let policies = [policy(
        "sandbox",
        "interp",
        json!({"app": "python-interpreter"}),
        0,
    )];
    match mutate(&pod, &policies, &cfg()) {
        Mutation::Refuse(why) => assert!(why.contains("hostNetwork"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn native_sidecars_are_init_containers_that_keep_running() {
    let mut c = cfg();
    c.native_sidecar = true;
    let (pod, m) = mutate_fixture(
        "claude-code-notebook-mcp.yaml",
        "notebooks",
        "nb",
        json!({"tier": "tools"}),
        &c,
    );
    let out = injected(&pod, &m);
    let spec = out.spec.as_ref().unwrap();
    assert!(spec.containers.iter().all(|c| c.name != CONTAINER));
    let init: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        init,
        vec!["fetch-notebooks", CONTAINER],
        "after the pod's own init containers"
    );
    assert_eq!(
        container(&out, CONTAINER).restart_policy.as_deref(),
        Some("Always")
    );
    // Numeric probes are left as they were; the app's own scrape port is kept.
    let probe = container(&out, "notebook-mcp")
        .startup_probe
        .clone()
        .unwrap();
    assert_eq!(probe.http_get.unwrap().port, IntOrString::Int(3000));
    assert_eq!(
        out.metadata.annotations.as_ref().unwrap()["prometheus.io/port"],
        "9100"
    );
}

#[test]
fn opted_out_and_unselected_pods_are_skipped() {
    let mut pod = fixture_pod("jupyter-mcp.yaml");
    let policies = [policy(
        "notebooks",
        "jupyter",
        json!({"app": "jupyter-mcp"}),
        0,
    )];
    pod.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(INJECT_LABEL.into(), "false".into());
    assert!(
        matches!(mutate(&pod, &policies, &cfg()), Mutation::Skip(r) if r.contains("inject=false"))
    );
    let other = fixture_pod("mcp-python-interpreter.yaml");
    assert!(
        matches!(mutate(&other, &policies, &cfg()), Mutation::Skip(r) if r.contains("no McpPolicy"))
    );
    // A policy of another namespace never applies.
    let elsewhere = [policy("other-ns", "p", json!({"app": "jupyter-mcp"}), 0)];
    assert!(matches!(
        mutate(&fixture_pod("jupyter-mcp.yaml"), &elsewhere, &cfg()),
        Mutation::Skip(_)
    ));
}

#[test]
fn of_two_matching_policies_the_oldest_wins() {
    let pod = fixture_pod("claude-code-notebook-mcp.yaml");
    let newer = policy("notebooks", "a-newer", json!({"app": "notebook-mcp"}), 30);
    let older = policy("notebooks", "z-older", json!({"tier": "tools"}), 10);
    for order in [
        vec![newer.clone(), older.clone()],
        vec![older.clone(), newer.clone()],
    ] {
        let Mutation::Inject { policy, .. } = mutate(&pod, &order, &cfg()) else {
            panic!()
        };
        assert_eq!(policy, "notebooks/z-older");
    }
    let mut deleting = older.clone();
    deleting.metadata.deletion_timestamp = Some(chrono_time(50));
    let Mutation::Inject { policy, .. } = mutate(&pod, &[deleting, newer], &cfg()) else {
        panic!()
    };
    assert_eq!(
        policy, "notebooks/a-newer",
        "a policy being deleted no longer injects"
    );
}

#[test]
fn a_selected_pod_without_an_mcp_port_is_refused_with_the_fix() {
    let mut pod = fixture_pod("mcp-python-interpreter.yaml");
    pod.spec.as_mut().unwrap().containers[0]
        .ports
        .as_mut()
        .unwrap()[0]
        .name = Some("http".into());
    let m = mutate(
        &pod,
        &[policy(
            "sandbox",
            "interp",
            json!({"app": "python-interpreter"}),
            0,
        )],
        &cfg(),
    );
    let Mutation::Refuse(msg) = m else {
        panic!("{m:?}")
    };
    assert!(
        msg.contains("sandbox/interp")
            && msg.contains("named \"mcp\"")
            && msg.contains("targetPort: mcp"),
        "{msg}"
    );
}

#[test]
fn selectors_follow_kubernetes_semantics() {
    use crate::crd::PodSelector;
    let labels: std::collections::BTreeMap<String, String> = [
        ("app".to_string(), "a".to_string()),
        ("tier".to_string(), "tools".to_string()),
    ]
    .into();
    let sel = |v: Value| serde_json::from_value::<PodSelector>(v).unwrap();
    assert!(
        selector_matches(&sel(json!({})), &labels),
        "empty matches all"
    );
    assert!(selector_matches(
        &sel(json!({"matchLabels": {"app": "a"}})),
        &labels
    ));
    assert!(!selector_matches(
        &sel(json!({"matchLabels": {"app": "b"}})),
        &labels
    ));
    let expr = |op: &str, values: Value| {
        sel(json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]}))
    };
    assert!(selector_matches(
        &expr("In", json!(["tools", "x"])),
        &labels
    ));
    assert!(!selector_matches(&expr("NotIn", json!(["tools"])), &labels));
    assert!(selector_matches(
        &sel(json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]})),
        &labels
    ));
    assert!(selector_matches(
        &sel(json!({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]})),
        &labels
    ));
    assert!(selector_matches(
        &sel(json!({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]})),
        &labels
    ));
}

mod reviews {
    use super::*;
    use crate::webhook::{review_pod, Outcome};
    use base64::Engine as _;

    fn fixture() -> Value {
        let path = format!(
            "{}/tests/fixtures/admission/pod-create.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn answer(review: &Value, policies: &[McpPolicy]) -> (Value, Outcome, bool) {
        let r = review_pod(
            &serde_json::to_vec(review).unwrap(),
            |_| policies.to_vec(),
            &cfg(),
        );
        (
            serde_json::to_value(r.review).unwrap(),
            r.outcome,
            r.dry_run,
        )
    }

    #[test]
    fn a_pod_review_is_answered_with_a_json_patch_for_its_uid() {
        let review = fixture();
        let (resp, outcome, dry) = answer(
            &review,
            &[policy(
                "notebooks",
                "jupyter",
                json!({"app": "jupyter-mcp"}),
                0,
            )],
        );
        assert_eq!(
            outcome,
            Outcome::Injected {
                policy: "notebooks/jupyter".into()
            }
        );
        assert!(!dry);
        let r = &resp["response"];
        assert_eq!(resp["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(r["uid"], review["request"]["uid"]);
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        // The patch, applied to the object the API server sent, injects the sidecar.
        // Go's decoder takes []byte as base64 text or as an array of numbers; kube writes the latter.
        let patch_json: Vec<u8> = match &r["patch"] {
            Value::String(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
            Value::Array(bytes) => bytes.iter().map(|b| b.as_u64().unwrap() as u8).collect(),
            other => panic!("patch is {other}"),
        };
        let patch: json_patch::Patch = serde_json::from_slice(&patch_json).unwrap();
        let mut obj = review["request"]["object"].clone();
        json_patch::patch(&mut obj, &patch).unwrap();
        let names: Vec<&str> = obj["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, vec!["jupyter-mcp", CONTAINER]);
        assert_eq!(
            obj["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"],
            8888
        );
        assert_eq!(
            obj["metadata"]["annotations"][POLICY_ANNOTATION],
            "notebooks/jupyter"
        );
    }

    #[test]
    fn skips_are_allowed_unchanged_and_refusals_denied_with_the_reason() {
        let mut review = fixture();
        let (resp, outcome, _) = answer(&review, &[]);
        assert!(matches!(outcome, Outcome::Skipped { .. }));
        assert_eq!(resp["response"]["allowed"], true);
        assert!(resp["response"].get("patch").is_none());

        review["request"]["object"]["spec"]["containers"][0]["ports"][0]["name"] = json!("http");
        review["request"]["dryRun"] = json!(true);
        let (resp, outcome, dry) = answer(
            &review,
            &[policy(
                "notebooks",
                "jupyter",
                json!({"app": "jupyter-mcp"}),
                0,
            )],
        );
        assert!(matches!(outcome, Outcome::Refused { .. }));
        assert!(dry, "dry runs are reported so no Event is recorded");
        assert_eq!(resp["response"]["allowed"], false);
        assert!(resp["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("named \"mcp\""));
    }

    #[test]
    fn an_unreadable_review_is_an_error_not_a_silent_allow() {
        let r = review_pod(b"{\"kind\": \"AdmissionReview\"", |_| vec![], &cfg());
        assert_eq!(r.outcome.label(), "error");
        let v = serde_json::to_value(r.review).unwrap();
        assert_eq!(v["response"]["allowed"], false);
    }
}

mod policy_reviews {
    use super::*;
    use crate::webhook::review::review_policy;

    /// The fixture review of an McpPolicy CREATE, with `spec` as the object's spec.
    fn review(spec: Value) -> Value {
        let mut body: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/admission/mcppolicy-create.json"
        ))
        .unwrap();
        body["request"]["object"]["spec"] = spec;
        serde_json::to_value(review_policy(&serde_json::to_vec(&body).unwrap())).unwrap()
    }

    #[test]
    fn a_valid_policy_is_allowed() {
        let r = review(json!({"podSelector": {}, "upstream": {"port": 8888}, "tools": {"a": {}}}));
        assert_eq!(r["response"]["allowed"], true, "{r}");
        assert_eq!(r["response"]["uid"], "3c1b6d4e-9a7f-4e21-8d55-2f0a8c9e1b77");
    }

    #[test]
    fn what_the_schema_cannot_express_is_refused_with_field_paths() {
        let r = review(
            json!({"podSelector": {}, "upstream": {"port": 8888}, "tools": {
                "a": {"denyIf": [{"conditions": [{"path": "args.x", "op": "regex", "value": "(unclosed"}]}]},
                "b": {"require": [{"path": "args..x", "op": "exists"}]},
                "c": {"limits": [{"counter": "shared", "window": "minute", "max": 1}]},
                "d": {"limits": [{"counter": "shared", "window": "hour", "max": 1}]}
            }}),
        );
        assert_eq!(r["response"]["allowed"], false);
        let msg = r["response"]["status"]["message"].as_str().unwrap();
        for part in [
            "spec.tools.a.denyIf[0].conditions[0].value: invalid regex",
            "spec.tools.b.require[0].path:",
            "spec.tools.d.limits[0]: counter \"shared\" is declared at spec.tools.c.limits[0]",
        ] {
            assert!(msg.contains(part), "missing {part:?} in {msg}");
        }
    }
}
