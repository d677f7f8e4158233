"""Renders the chart in every combination of its toggles and validates every object.

- `helm lint` and `helm template` for all 64 combinations of serviceMonitor, podMonitor,
  prometheusRule, grafanaDashboard, networkPolicy and certManager;
- every built-in Kubernetes object against the Kubernetes JSON schemas (kubernetes-validate,
  strict: unknown fields are errors), for Kubernetes 1.33;
- prometheus-operator and cert-manager objects (not in those schemas) for their apiVersion and
  required top-level fields; the dashboard ConfigMap for valid JSON;
- every McpPolicy in deploy/ and examples/ against the generated CRD's openAPIV3Schema.

Usage: python validate.py HELM   (run from anywhere; exits non-zero on the first failure class)
"""
import itertools
import json
import pathlib
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mcp-warden"
HELM = sys.argv[1]
K8S = "1.33.0"
TOGGLES = ["serviceMonitor", "podMonitor", "prometheusRule", "grafanaDashboard", "networkPolicy", "certManager"]
CUSTOM = {
    "ServiceMonitor": ("monitoring.coreos.com/v1", ["endpoints", "selector"]),
    "PodMonitor": ("monitoring.coreos.com/v1", ["podMetricsEndpoints", "selector"]),
    "PrometheusRule": ("monitoring.coreos.com/v1", ["groups"]),
    "Certificate": ("cert-manager.io/v1", ["secretName", "issuerRef", "dnsNames"]),
    "Issuer": ("cert-manager.io/v1", []),
}
failures = []


def helm(*args):
    r = subprocess.run([HELM, *args], capture_output=True, text=True)
    if r.returncode != 0:
        failures.append(f"helm {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def check_object(obj, where):
    kind = obj.get("kind")
    if kind in CUSTOM:
        api, fields = CUSTOM[kind]
        if obj.get("apiVersion") != api:
            failures.append(f"{where}: {kind} apiVersion {obj.get('apiVersion')} (expected {api})")
        missing = [f for f in fields if f not in (obj.get("spec") or {})]
        if missing or not obj.get("metadata", {}).get("name"):
            failures.append(f"{where}: {kind} lacks {missing or 'metadata.name'}")
        if kind == "PrometheusRule":
            for g in obj["spec"]["groups"]:
                for r in g["rules"]:
                    name = r.get("alert") or r.get("record")
                    if not name or not r.get("expr") or "{{" in r["expr"]:
                        failures.append(f"{where}: rule {name} is not rendered")
        return
    try:
        kubernetes_validate.validate(obj, K8S, strict=True)
    except kubernetes_validate.ValidationError as e:
        failures.append(f"{where}: {kind}/{obj['metadata'].get('name')}: {e.message} at {'.'.join(map(str, e.path))}")
    if kind == "ConfigMap" and "mcp-warden.json" in (obj.get("data") or {}):
        json.loads(obj["data"]["mcp-warden.json"])
    if kind == "CustomResourceDefinition":
        file = {"mcppolicies.mcpwarden.dev": "mcppolicy.yaml",
                "mcpapprovals.mcpwarden.dev": "mcpapproval.yaml"}.get(obj["metadata"]["name"])
        if file is None:
            failures.append(f"{where}: an unknown CRD {obj['metadata']['name']}")
        elif obj != yaml.safe_load((ROOT / "crds" / file).read_text()):
            failures.append(f"{where}: the rendered CRD is not crds/{file}")


def main():
    out = subprocess.run([HELM, "lint", str(CHART)], capture_output=True, text=True)
    print(out.stdout.strip().splitlines()[-1] if out.stdout else out.stderr)
    if out.returncode != 0:
        failures.append("helm lint: " + out.stdout + out.stderr)
    kinds_seen = set()
    for combo in itertools.product([False, True], repeat=len(TOGGLES)):
        sets = ",".join(f"{t}.enabled={str(on).lower()}" for t, on in zip(TOGGLES, combo))
        text = helm("template", "mcp-warden", str(CHART), "--namespace", "mcp-warden", "--kube-version", K8S,
                    "--api-versions", "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy",
                    "--include-crds", "--set", sets)
        objs = [d for d in yaml.safe_load_all(text) if d]
        for o in objs:
            kinds_seen.add(o["kind"])
            check_object(o, sets)
        # Each toggle adds exactly its object.
        present = {o["kind"] for o in objs}
        for t, on, kind in zip(TOGGLES, combo, ["ServiceMonitor", "PodMonitor", "PrometheusRule", None, "NetworkPolicy", "Certificate"]):
            if kind and (kind in present) != on:
                failures.append(f"{sets}: {t} {'on' if on else 'off'} but {kind} {'missing' if on else 'rendered'}")
        webhooks = [o for o in objs if o["kind"].endswith("WebhookConfiguration")]
        for w in webhooks:
            for h in w["webhooks"]:
                if "caBundle" in h["clientConfig"]:
                    failures.append(f"{sets}: the chart sets caBundle in {w['kind']}")
    print(f"rendered 64 combinations; kinds: {', '.join(sorted(kinds_seen))}")

    crd = yaml.safe_load((ROOT / "crds" / "mcppolicy.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    n = 0
    for f in sorted([*ROOT.glob("deploy/examples/*.yaml"), *ROOT.glob("tests/fixtures/mcppolicies.yaml")]):
        for d in yaml.safe_load_all(f.read_text()):
            if d and d.get("kind") == "McpPolicy" and d["metadata"]["name"] != "broken":
                try:
                    jsonschema.validate(d, schema)
                    n += 1
                except jsonschema.ValidationError as e:
                    failures.append(f"{f.name}: {d['metadata']['name']}: {e.message} at {'.'.join(map(str, e.path))}")
    if n == 0:
        failures.append("no McpPolicy example was validated")
    print(f"validated {n} McpPolicy manifests against the CRD schema")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)
    print("chart OK")


main()
