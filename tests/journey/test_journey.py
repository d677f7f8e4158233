"""The user journey on the test cluster's real node, in the order a user lives it:

the image built from the Dockerfile and loaded into the node (tests/cluster/images.sh, the
README's commands) → `helm install` with default values: two controller pods Running and Ready
(probes, securityContext, PodDisruptionBudget), webhooks reached through their Service by
kube-proxy → the MCP Python Interpreter example applied (a namespace under PodSecurity
`restricted`): its pod injected, the native sidecar started before the server, the pod Ready →
a real Python SDK client through the Service's ClusterIP sees the seed rules → an agent pod's
projected ServiceAccount token names the caller and its grant applies → an McpPolicy edit reaches
the running sidecar by the kubelet's own ConfigMap sync → a person approves a call with the
kubectl plugin → Prometheus scrapes the pods → isolation proven on the wire from another pod →
the sidecar container killed: restarted, the server never reachable unguarded → three replicas
behind the Service hold one budget → the leader pod
deleted (HA) → the webhook down (failurePolicy: Fail) → the API server restarted → helm upgrade
with the monitoring objects → uninstall leaves only the CRDs.

The tests run in file order and share one installation (the `world` fixture)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from kube import (apply, container_pid, get_json, http_get, kubectl, metric, ready, ready_pods,
                  tcp_open, wait)

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("MCP_WARDEN_BIN", "")
HELM = os.environ.get("MCP_WARDEN_HELM_CURRENT", "")
# The kubelet's ConfigMap sync period on the test node (up.sh; a kubelet's default is 60 s).
SYNC_SECONDS = float(os.environ.get("KUBELET_SYNC_SECONDS", "1"))
NS, RELEASE, APP_NS = "mcp-warden", "mcp-warden", "sandbox"
EXAMPLE = ROOT / "deploy" / "examples" / "mcp-python-interpreter.yaml"
PYTHON_IMAGE = "localhost/mcp-python-interpreter:1.2.3"
CONTROLLER = "app.kubernetes.io/name=mcp-warden"
PROM_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
FIGURES = ROOT / "target" / "journey-figures.txt"


def helm(*args: str, timeout: float = 300) -> str:
    p = subprocess.run([HELM, *args], capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"helm {' '.join(args)}: {p.stderr}"
    return p.stdout


def figure(name: str, value: str) -> None:
    """A measured figure, printed and kept in target/journey-figures.txt for the README."""
    sys.stderr.write(f"figure: {name}: {value}\n")
    with FIGURES.open("a") as f:
        f.write(f"{name}: {value}\n")


class World:
    """The installation: where its pods are, found from the API each time (pods come and go)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mcp-warden-journey-"))

    def controllers(self) -> dict[str, str]:
        """Ready controller pods: name → pod IP."""
        return {p["metadata"]["name"]: p["status"]["podIP"] for p in ready_pods(NS, CONTROLLER)}

    def controller_metrics(self, name: str) -> str:
        ip = get_json("pod", "-n", NS, name)["status"]["podIP"]
        return http_get(f"http://{ip}:8080/metrics")[1]

    def leader(self) -> str:
        return get_json("lease", "-n", NS, f"{RELEASE}-leader")["spec"].get("holderIdentity", "")

    def app_ip(self) -> str:
        return mcp_pod()["status"]["podIP"]

    @property
    def proxy(self) -> str:
        """The MCP server's Service: the address agents in the cluster use (kube-proxy)."""
        return f"http://{get_json('service', '-n', APP_NS, 'python-interpreter')['spec']['clusterIP']}:80"

    @property
    def proxy_admin(self) -> str:
        return f"http://{self.app_ip()}:9481"


@pytest.fixture(scope="module")
def world():
    FIGURES.parent.mkdir(exist_ok=True)
    FIGURES.write_text("")
    w = World()
    yield w
    for ns in (APP_NS, "ci", "isolation"):
        kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false", check=False)
    subprocess.run([HELM, "uninstall", RELEASE, "-n", NS], capture_output=True, timeout=120)
    kubectl("delete", "configmap", "-n", NS, "issuer-ca", "--ignore-not-found", check=False)


def mcp_pod() -> dict:
    pods = [p for p in get_json("pods", "-n", APP_NS, "-l", "app=python-interpreter")["items"]
            if not p["metadata"].get("deletionTimestamp")]
    return pods[0] if pods else {}


def restricted_pod(name: str, namespace: str, labels: dict, args: list | None = None, port: int = 8000) -> dict:
    """A pod of the Python image that PodSecurity `restricted` admits, serving nothing unless
    `args` say so."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "server", "image": PYTHON_IMAGE, "imagePullPolicy": "Never",
                "args": args or ["-c", "import time; time.sleep(86400)"],
                "ports": [{"name": "mcp", "containerPort": port}],
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}}]}}


def sidecar_metrics(world) -> str:
    return http_get(f"{world.proxy_admin}/metrics")[1]


def policy_status() -> dict:
    return get_json("mcpp", "-n", APP_NS, "python-interpreter").get("status", {})


def condition(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def patch_policy(patch: dict, kind: str = "merge", timeout: float = 60) -> str:
    """Patches the example's McpPolicy; returns the hash the controller then renders."""
    before = policy_status()["policyHash"]
    kubectl("patch", "mcpp", "-n", APP_NS, "python-interpreter", "--type", kind, "-p", json.dumps(patch))
    return wait("the new render", lambda: (h := policy_status().get("policyHash")) != before and h, timeout=timeout)


def sidecar_on(world, hash_: str, timeout: float = 120) -> None:
    wait(f"the sidecar enforcing {hash_[:12]}", lambda: metric(
        sidecar_metrics(world), "mcp_warden_policy_info", hash=hash_) == 1, timeout=timeout, every=0.2)


# -- 1. install ---------------------------------------------------------------------------------


def test_helm_install_with_default_values(world):
    # A namespace left terminating by an earlier run must be gone first.
    wait("earlier namespaces gone", lambda: not kubectl("get", "namespace", APP_NS, "--ignore-not-found").strip(), timeout=120)
    started = time.monotonic()
    # Default values: the chart's image is the one images.sh built and loaded into the node.
    helm("install", RELEASE, str(ROOT / "charts" / "mcp-warden"), "-n", NS, "--create-namespace")
    crd = get_json("crd", "mcppolicies.mcpwarden.dev")
    assert crd["spec"]["names"]["shortNames"] == ["mcpp"]
    deploy = get_json("deployment", "-n", NS, RELEASE)
    assert deploy["spec"]["replicas"] == 2
    kubectl("rollout", "status", "-n", NS, f"deployment/{RELEASE}", "--timeout=180s", timeout=200)
    figure("helm install → both controller pods Ready", f"{time.monotonic() - started:.1f} s")
    pods = get_json("pods", "-n", NS, "-l", CONTROLLER)["items"]
    assert len(pods) == 2 and all(ready(p) for p in pods)
    for pod in pods:
        assert pod["spec"]["serviceAccountName"] == "mcp-warden"
        c = pod["status"]["containerStatuses"][0]
        assert c["ready"] and c["restartCount"] == 0, c
        assert c["image"].endswith("mcp-warden/mcp-warden:0.1.0"), c["image"]
    # The process really runs as the chart says: non-root, no capabilities, read-only root.
    pid = container_pid(pods[0], "controller")
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    assert status["Uid"].split()[0] == "65532", status["Uid"]
    assert int(status["CapEff"], 16) == 0 and status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
    mounts = Path(f"/proc/{pid}/mounts").read_text().splitlines()
    assert any(m.split()[1] == "/" and m.split()[3].startswith("ro") for m in mounts), "read-only root filesystem"
    pdb = get_json("pdb", "-n", NS, RELEASE)
    wait("the PDB counts both pods", lambda: get_json("pdb", "-n", NS, RELEASE)["status"].get("currentHealthy") == 2)
    assert pdb["spec"]["minAvailable"] == 1
    assert world.leader() in world.controllers()
    # The leader issued the webhook certificate and patched the chart's configurations.
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        wait(f"caBundle in {kind}", lambda k=kind: all(
            h["clientConfig"].get("caBundle") for h in get_json(k, RELEASE)["webhooks"]))
        for h in get_json(kind, RELEASE)["webhooks"]:
            assert h["clientConfig"]["service"]["name"] == f"{RELEASE}-webhook", "the chart's Service is used"
    slices = get_json("endpointslices", "-n", NS, "-l", f"kubernetes.io/service-name={RELEASE}-webhook")["items"]
    addrs = {a for s in slices for e in s.get("endpoints", []) if e["conditions"].get("ready") for a in e["addresses"]}
    assert addrs == set(world.controllers().values()), "the webhook Service has both pods as endpoints"


# -- 2. a guarded MCP server ------------------------------------------------------------------


def test_the_example_is_injected_and_ready_under_restricted(world):
    started = time.monotonic()
    kubectl("apply", "-f", str(EXAMPLE))
    ns = get_json("namespace", APP_NS)
    assert ns["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "restricted"
    policy = wait("the McpPolicy Ready", lambda: (
        p := get_json("mcpp", "-n", APP_NS, "python-interpreter")).get("status", {}).get("conditions")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"]) and p)
    assert policy["status"]["observedGeneration"] == policy["metadata"]["generation"]
    pod = wait("the server's pod Ready", lambda: (p := mcp_pod()) and ready(p) and p, timeout=180)
    figure("example applied → injected pod Ready", f"{time.monotonic() - started:.1f} s")
    created = time.mktime(time.strptime(pod["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ"))
    ready_at = time.mktime(time.strptime(condition(pod["status"], "Ready")["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ"))
    figure("pod create → Ready with the sidecar (API timestamps, 1 s resolution)", f"{ready_at - created:.0f} s")
    ann = pod["metadata"]["annotations"]
    assert ann["mcpwarden.dev/policy"] == f"{APP_NS}/python-interpreter"
    # A native sidecar: an init container that keeps running, started before the server.
    sidecar = next(c for c in pod["spec"].get("initContainers", []) if c["name"] == "mcp-warden")
    assert sidecar.get("restartPolicy") == "Always"
    assert sidecar["image"].endswith("mcp-warden/mcp-warden:0.1.0")
    sc = sidecar["securityContext"]
    assert sc["runAsNonRoot"] and sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    ports = {p.get("name"): p["containerPort"] for p in sidecar["ports"]}
    assert ports["mcp"] == 9480
    side = next(c for c in pod["status"]["initContainerStatuses"] if c["name"] == "mcp-warden")
    server = next(c for c in pod["status"]["containerStatuses"] if c["name"] == "interpreter")
    assert side["started"] and side["ready"] and server["ready"]
    assert side["state"]["running"]["startedAt"] <= server["state"]["running"]["startedAt"], (side, server)
    cm = get_json("configmap", "-n", APP_NS, "python-interpreter-mcp-warden")
    assert json.loads(cm["data"]["policy.json"])["name"] == f"{APP_NS}/python-interpreter"
    assert get_json("networkpolicy", "-n", APP_NS, "python-interpreter-mcp-warden")
    wait("status counts the injected pod", lambda: (
        s := policy_status()).get("injectedPods") == 1 and s.get("matchedPods") == 1)
    # The Service's endpoint is the sidecar's port.
    wait("the Service's endpoint", lambda: any(
        e["conditions"].get("ready") and world.app_ip() in e["addresses"]
        for s in get_json("endpointslices", "-n", APP_NS, "-l", "kubernetes.io/service-name=python-interpreter")["items"]
        for e in s.get("endpoints", [])))


@contextlib.asynccontextmanager
async def client(world, token: str | None = None, base: str | None = None, elicitation=None):
    """A Python SDK client session through the Service, or to `base` (one pod's sidecar, named
    by the Service's name as agents in the cluster name it); `elicitation` answers the questions
    put to its user."""
    from mcp import ClientSession
    from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if base:
        headers["Host"] = f"python-interpreter.{APP_NS}.svc"
    async with create_mcp_http_client(headers=headers or None) as http, \
            streamable_http_client(f"{base or world.proxy}/mcp", http_client=http) as streams:
        async with ClientSession(streams[0], streams[1], elicitation_callback=elicitation) as s:
            await s.initialize()
            yield s


async def call(s, name: str, args: dict | None = None) -> tuple[bool, str]:
    r = await s.call_tool(name, args or {})
    return bool(r.isError), (r.content[0].text if r.content else "")


async def call_meta(s, name: str, args: dict) -> tuple[bool, str, dict]:
    r = await s.call_tool(name, args)
    meta = getattr(r, "meta", None) or getattr(r, "_meta", None) or {}
    return bool(r.isError), (r.content[0].text if r.content else ""), meta.get("dev.mcpwarden/decision", {})


@pytest.mark.anyio
async def test_a_real_client_is_governed_by_the_policy(world):
    async with client(world) as s:
        names = {t.name for t in (await s.list_tools()).tools}
        assert {"run_python_code", "write_file", "list_directory"} <= names
        assert "install_package" not in names, "a denied tool is not listed"
        assert "run_python_file" not in names, "a tool default: deny never allows is not listed"
        assert "clear_session" in names, "a tool that needs approval is listed"

        assert await call(s, "install_package", {"package_name": "x"}) == (True, "Package installs are disabled in this namespace")
        err, text = await call(s, "run_python_code", {"code": "import os; print(6 * 7, os.getuid())"})
        assert not err and "42 65532" in text, text
        err, text = await call(s, "run_python_code", {"code": "import shutil; shutil.rmtree('/workspace')"})
        assert err and text == "Destructive code is not allowed"
        for i in range(60):
            err, text = await call(s, "list_directory", {"directory_path": "/workspace"})
            assert not err, f"call {i}: {text}"
        err, text = await call(s, "list_directory", {"directory_path": "/workspace"})
        assert err and text.startswith("Rate limit exceeded: list_directory_rate allows 60 calls per minute"), text
    m = sidecar_metrics(world)
    policy = f"{APP_NS}/python-interpreter"
    assert metric(m, "mcp_warden_decisions_total", policy=policy, tool="install_package", decision="deny") == 1
    assert metric(m, "mcp_warden_decisions_total", policy=policy, tool="list_directory", decision="allow") == 60
    assert metric(m, "mcp_warden_decisions_total", policy=policy, tool="list_directory", decision="rate_limited") == 1


def run_agent_pod(world, name: str, namespace: str, sa: str, calls: list, audience: str = "mcp-warden",
                  phase: str = "Succeeded") -> list[dict]:
    """Runs tests/journey/agent.py in a pod of `namespace` as ServiceAccount `sa`, with a token
    the kubelet projects for `audience`, to the end `phase`; returns its output lines."""
    script = (ROOT / "tests" / "journey" / "agent.py").read_text()
    apply([
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-script", "namespace": namespace},
         "data": {"agent.py": script}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
         "spec": {
             "serviceAccountName": sa, "restartPolicy": "Never", "automountServiceAccountToken": False,
             "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
             "containers": [{
                 "name": "agent", "image": PYTHON_IMAGE, "imagePullPolicy": "Never",
                 "args": ["/agent/agent.py"],
                 "env": [{"name": "MCP_URL", "value": f"{world.proxy}/mcp"},
                         {"name": "TOKEN_FILE", "value": "/var/run/secrets/agent/token"},
                         {"name": "CALLS", "value": json.dumps(calls)}],
                 "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                     "capabilities": {"drop": ["ALL"]}},
                 "volumeMounts": [{"name": "script", "mountPath": "/agent"},
                                  {"name": "token", "mountPath": "/var/run/secrets/agent"}]}],
             "volumes": [{"name": "script", "configMap": {"name": f"{name}-script"}},
                         {"name": "token", "projected": {"sources": [{"serviceAccountToken": {
                             "audience": audience, "expirationSeconds": 3600, "path": "token"}}]}}]}},
    ])
    pod = wait(f"the agent pod {name} to finish", lambda: (
        p := get_json("pod", "-n", namespace, name))["status"].get("phase") in ("Succeeded", "Failed") and p, timeout=120)
    logs = kubectl("logs", "-n", namespace, name)
    assert pod["status"]["phase"] == phase, logs
    return [json.loads(line) for line in logs.splitlines() if line.startswith("{")]


@pytest.mark.anyio
async def test_the_pods_projected_token_names_the_caller_and_its_grant_applies(world):
    """An agent pod running as ServiceAccount ci/ci-agent: the kubelet projects its token, the
    sidecar verifies it against the keys the controller rendered, and the grant's 100 writes an
    hour apply to it where everyone else gets the base 30."""
    kubectl("create", "namespace", "ci")
    kubectl("create", "serviceaccount", "ci-agent", "-n", "ci")
    writes = [["write_file", {"file_path": f"/workspace/ci-{i}.txt", "content": "x"}] for i in range(31)]
    out = run_agent_pod(world, "ci-agent", "ci", "ci-agent", writes)
    assert len(out) == 31
    assert all(not o["error"] for o in out), [o for o in out if o["error"]][:2]
    # The sidecar's audit lines (its container's log) name the verified ServiceAccount and grant.
    audit = [json.loads(line) for line in kubectl("logs", "-n", APP_NS, mcp_pod()["metadata"]["name"], "-c", "mcp-warden").splitlines()
             if line.startswith("{") and '"mcp_warden::audit"' in line]
    writes_seen = [a for a in audit if a["tool"] == "write_file"]
    assert len(writes_seen) == 31 and all(a["decision"] == "allow" for a in writes_seen), writes_seen[:2]
    assert {(a["identity"], a.get("grant")) for a in writes_seen} == {("system:serviceaccount:ci:ci-agent", "grants[0]")}
    # Anyone else (here: anonymous, no token) is held to the base rule: 30 an hour.
    async with client(world) as s:
        for i in range(30):
            err, text = await call(s, "write_file", {"file_path": f"/workspace/anon-{i}.txt", "content": "x"})
            assert not err, text
        err, text = await call(s, "write_file", {"file_path": "/workspace/anon-30.txt", "content": "x"})
        assert err and text.startswith("Rate limit exceeded: write_file_rate"), text
    # A token for another audience is refused before anything reaches the server.
    out = run_agent_pod(world, "wrong-audience", "ci", "ci-agent", [["list_sessions", {}]], audience="other",
                        phase="Failed")
    assert out == [], "the client never got a session"
    logs = kubectl("logs", "-n", "ci", "wrong-audience")
    assert "401 Unauthorized" in logs, logs[-2000:]


def test_the_policy_status_shows_the_servers_real_tools(world):
    """The controller reads what the running sidecar listed of the real MCP Python Interpreter
    into the McpPolicy status, and a misspelt rule shows up as UnknownTools with an Event."""
    status = wait("the server's tools in status", lambda: (s := policy_status()).get("observedToolCount") and s, timeout=90)
    names = [t["name"] for t in status["observedTools"]]
    assert {"run_python_code", "write_file", "clear_session", "install_package"} <= set(names), names
    assert status["observedToolCount"] == len(names) and names == sorted(names)
    assert all(t["hash"].startswith("sha256:") for t in status["observedTools"])
    assert status.get("toolsAllowedByDefault") == [], "default: deny lets nothing through unnamed"
    assert condition(status, "UnknownTools")["status"] == "False", status["conditions"]
    assert condition(status, "UnknownArguments")["status"] == "False", status["conditions"]
    assert condition(status, "ToolDefinitionChanged")["status"] == "False", status["conditions"]

    kubectl("patch", "mcpp", "-n", APP_NS, "python-interpreter", "--type", "merge", "-p",
            json.dumps({"spec": {"tools": {"list_directorys": {}}}}))
    unknown = wait("UnknownTools for the misspelt rule", lambda: (
        c := condition(policy_status(), "UnknownTools")).get("status") == "True" and c, timeout=90)
    assert "tools.list_directorys" in unknown["message"], unknown
    events = get_json("events", "-n", APP_NS, "--field-selector", "involvedObject.name=python-interpreter")["items"]
    assert any(e.get("reason") == "UnknownTools" and "list_directorys" in (e.get("message") or e.get("note") or "")
               for e in events), [(e.get("reason"), e.get("message")) for e in events]
    s = policy_status()
    assert s["observedToolCount"] == status["observedToolCount"]
    assert condition(s, "Ready")["status"] == "True"
    kubectl("patch", "mcpp", "-n", APP_NS, "python-interpreter", "--type", "merge", "-p",
            json.dumps({"spec": {"tools": {"list_directorys": None}}}))
    wait("UnknownTools cleared", lambda: condition(policy_status(), "UnknownTools").get("status") == "False", timeout=90)


@pytest.mark.anyio
async def test_first_seen_pins_are_the_policys_and_every_pod_holds_to_them(world):
    """Under `pinning: firstSeen` the controller records in the status what the policy's pods
    first saw, renders it to every pod, and the sidecar holds each tool to the record: a recorded
    definition the server no longer shows is refused, whatever the pod saw itself."""
    import anyio
    patch_policy({"spec": {"pinning": "firstSeen"}})
    status = wait("the record of first-seen definitions", lambda: (s := policy_status()).get("firstSeen") and s,
                  timeout=120)
    observed = {t["name"]: t["hash"] for t in status["observedTools"]}
    assert status["firstSeen"] == observed, "every tool, at the definition the pods first saw"
    seen = lambda: json.loads(get_json("configmap", "-n", APP_NS, "python-interpreter-mcp-warden")["data"].get("seen.json", "{}"))
    wait("the record rendered to the pods", lambda: seen() == {"tools": observed}, timeout=60)
    async with client(world) as s:
        err, text = await call(s, "list_sessions")
        assert not err, text

    # The record is the policy's, not the pod's: one that holds another definition of
    # list_sessions than the server shows (as after a change no running pod saw) is enforced.
    held = {**observed, "list_sessions": "sha256:" + "0" * 64}
    kubectl("patch", "mcpp", "-n", APP_NS, "python-interpreter", "--subresource=status", "--type", "merge",
            "-p", json.dumps({"status": {"firstSeen": held}}))
    wait("the held record rendered", lambda: seen() == {"tools": held}, timeout=60)
    assert policy_status()["firstSeen"] == held, "a recorded definition is never replaced"

    async def refused() -> str | None:
        async with client(world) as s:
            err, text = await call(s, "list_sessions")
            return text if err and "changed since it was pinned" in text else None
    deadline = time.monotonic() + 60
    while (text := await refused()) is None:
        assert time.monotonic() < deadline, "the sidecar never held list_sessions to the policy's record"
        await anyio.sleep(1)
    assert "list_sessions" in text, text

    # A person who accepts the definition the server shows pins it, as ToolDefinitionChanged
    # says: the explicit pin decides, and the tool runs again.
    patch_policy({"spec": {"pins": {"list_sessions": observed["list_sessions"]}}})
    deadline = time.monotonic() + 60
    while await refused() is not None:
        assert time.monotonic() < deadline, "list_sessions stayed refused under its explicit pin"
        await anyio.sleep(1)
    # Without firstSeen pinning there is no record: none rendered, none kept in the status.
    patch_policy({"spec": {"pinning": None, "pins": None}})
    wait("no record rendered without firstSeen", lambda: "seen.json" not in
         get_json("configmap", "-n", APP_NS, "python-interpreter-mcp-warden")["data"], timeout=60)
    wait("no record kept without firstSeen", lambda: "firstSeen" not in policy_status(), timeout=120)


@pytest.mark.anyio
async def test_an_edit_reaches_the_running_sidecar_by_the_kubelets_sync(world):
    pod = mcp_pod()
    restarts = next(c for c in pod["status"]["initContainerStatuses"] if c["name"] == "mcp-warden")["restartCount"]
    started = time.monotonic()
    after = patch_policy({"spec": {"tools": {"read_file": {"action": "deny", "reason": "Reading is paused"}}}})
    rendered = time.monotonic()
    assert condition(policy_status(), "Ready")["status"] == "True"
    # The kubelet rewrites the ConfigMap volume (a ..data swap); the sidecar reloads.
    sidecar_on(world, after)
    enforced = time.monotonic()
    figure(f"McpPolicy edit → enforced by the sidecar (kubelet syncFrequency {SYNC_SECONDS:g} s)",
           f"{enforced - started:.1f} s (render {rendered - started:.1f} s, kubelet sync + reload {enforced - rendered:.1f} s)")
    now = mcp_pod()
    assert now["metadata"]["uid"] == pod["metadata"]["uid"], "the same pod"
    assert next(c for c in now["status"]["initContainerStatuses"] if c["name"] == "mcp-warden")["restartCount"] == restarts, \
        "no restart"
    async with client(world) as s:
        assert await call(s, "read_file", {"file_path": "/workspace/x"}) == (True, "Reading is paused")
    events = get_json("events", "-n", APP_NS, "--field-selector", "involvedObject.name=python-interpreter")["items"]
    assert any(e.get("reason") == "Rendered" for e in events), [e.get("reason") for e in events]


def impersonating_kubeconfig(world, user: str) -> Path:
    """The admin's kubeconfig acting as `user` (kubeconfig `as:`), as a person's would."""
    cfg = json.loads(kubectl("config", "view", "--raw", "-o", "json"))
    for u in cfg["users"]:
        u["user"]["as"] = user
    path = world.dir / f"{user.replace(':', '_')}.kubeconfig"
    path.write_text(json.dumps(cfg))
    return path


def plugin(world, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess:
    """`kubectl mcp-warden ARGS`: the binary installed as the kubectl plugin, found on PATH."""
    bindir = world.dir / "plugins"
    bindir.mkdir(exist_ok=True)
    link = bindir / "kubectl-mcp_warden"
    if not link.exists():
        link.symlink_to(BIN)
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), PATH=f"{bindir}:{os.environ['PATH']}")
    return subprocess.run([os.environ.get("MCP_WARDEN_KUBECTL", "kubectl"), "mcp-warden", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def approval_for(approval_id: str) -> dict:
    items = get_json("mcpa", "-n", APP_NS)["items"]
    return next((a for a in items if a["spec"]["approvalId"] == approval_id), {})


@pytest.mark.anyio
async def test_a_person_approves_an_agents_call(world):
    agent = f"system:serviceaccount:{APP_NS}:agent"
    kubectl("create", "serviceaccount", "agent", "-n", APP_NS)
    token = kubectl("create", "token", "agent", "-n", APP_NS, "--audience", "mcp-warden").strip()
    # alice approves; so could the agent's own ServiceAccount (a careless binding) — the webhook
    # still refuses it its own requests.
    kubectl("create", "rolebinding", "approvers", "-n", APP_NS, f"--clusterrole={RELEASE}-approver",
            "--user=alice", f"--serviceaccount={APP_NS}:agent")
    alice = impersonating_kubeconfig(world, "alice")
    args = {"session_id": "default"}
    async with client(world, token) as s:
        err, text, d = await call_meta(s, "clear_session", args)
        assert err and d["decision"] == "approval_required" and "needs a person's approval" in text, text
        approval_id = d["approvalId"]
        assert d["identity"] == agent
        # The controller reads the sidecar's admin API (with its own token) and makes an McpApproval.
        a = wait("the McpApproval", lambda: approval_for(approval_id), timeout=60)
        name = a["metadata"]["name"]
        assert (a["spec"]["tool"], a["spec"]["identity"], a["spec"]["pod"]) == ("clear_session", agent, mcp_pod()["metadata"]["name"])
        assert json.loads(a["spec"]["arguments"]) == args
        wait("phase Pending", lambda: get_json("mcpa", "-n", APP_NS, name).get("status", {}).get("phase") == "Pending")
        listed = plugin(world, alice, "approvals", "list", "-n", APP_NS)
        assert listed.returncode == 0 and name in listed.stdout and '{"session_id":"default"}' in listed.stdout, listed

        # The agent approving its own call: refused by the webhook, though RBAC would allow it.
        self_approval = subprocess.run(
            [os.environ.get("MCP_WARDEN_KUBECTL", "kubectl"), "--as", agent, "patch", "mcpa", "-n", APP_NS, name,
             "--type=merge", "-p", '{"spec":{"decision":"Approved"}}'], capture_output=True, text=True)
        assert self_approval.returncode != 0 and "cannot decide it" in self_approval.stderr, self_approval.stderr
        assert "decision" not in get_json("mcpa", "-n", APP_NS, name)["spec"]

        # alice approves with the kubectl plugin; decidedBy is hers whatever a client writes.
        started = time.monotonic()
        done = plugin(world, alice, "approve", name, "-n", APP_NS)
        assert done.returncode == 0 and "approved by alice" in done.stdout, (done.stdout, done.stderr)
        spec = get_json("mcpa", "-n", APP_NS, name)["spec"]
        assert (spec["decision"], spec["decidedBy"]) == ("Approved", "alice")
        # A decision is final.
        flip = plugin(world, alice, "reject", name, "-n", APP_NS)
        assert flip.returncode != 0 and "is final" in flip.stderr, (flip.stdout, flip.stderr)

        # The identical call runs once the approval reaches the sidecar.
        while True:
            err, text, d = await call_meta(s, "clear_session", args)
            if not err:
                break
            assert d.get("decision") == "approval_required", text
            assert time.monotonic() - started < 120, "the approval never reached the sidecar"
            await anyio_sleep(0.1)
        latency = time.monotonic() - started
        figure(f"approve → the call runs (kubelet syncFrequency {SYNC_SECONDS:g} s)", f"{latency:.1f} s")
        # Once: the second identical call needs approval again; other arguments are another call.
        err, _, d = await call_meta(s, "clear_session", args)
        assert err and d["decision"] == "approval_required" and d["approvalId"] == approval_id
        err, _, d = await call_meta(s, "clear_session", {"session_id": "other"})
        assert err and d["decision"] == "approval_required" and d["approvalId"] != approval_id
    wait("phase Used", lambda: get_json("mcpa", "-n", APP_NS, name)["status"]["phase"] == "Used", timeout=30)
    events = get_json("events", "-n", APP_NS, "--field-selector", f"involvedObject.name={name}")["items"]
    assert {"Requested", "Approved", "Used"} <= {e.get("reason") for e in events}, [e.get("reason") for e in events]
    assert metric(sidecar_metrics(world), "mcp_warden_approvals_total", tool="clear_session", result="used") == 1

    # An approval that has expired allows nothing: a short ttl, approved, then waited out.
    sidecar_on(world, patch_policy({"spec": {"tools": {"clear_session": {"action": None, "approval": {"ttl": "20s"}}}}}))
    async with client(world, token) as s:
        err, _, d = await call_meta(s, "clear_session", {"session_id": "later"})
        assert err and d["decision"] == "approval_required"
        late_approval = wait("the McpApproval", lambda: approval_for(d["approvalId"]), timeout=60)
        assert late_approval["spec"]["ttlSeconds"] == 20
        late = late_approval["metadata"]["name"]
        assert plugin(world, alice, "approve", late, "-n", APP_NS).returncode == 0
        wait("phase Approved", lambda: get_json("mcpa", "-n", APP_NS, late)["status"]["phase"] == "Approved", timeout=30)
        wait("phase Expired", lambda: get_json("mcpa", "-n", APP_NS, late)["status"]["phase"] == "Expired", timeout=60)
        err, _, d = await call_meta(s, "clear_session", {"session_id": "later"})
        assert err and d["decision"] == "approval_required", "an expired approval allows nothing"


@pytest.mark.anyio
async def test_the_user_confirms_a_call_in_their_own_client(world):
    # The user at the MCP client confirms list_sessions (the CRD's spelling); the Python SDK
    # (2025-11-25, a session) is asked with elicitation/create on the call's own stream.
    after = patch_policy({"spec": {"tools": {"list_sessions": {"approval": {"by": "user"}}}}})
    sidecar_on(world, after)
    shown = []

    def user(action):
        async def answer(_context, params):
            from mcp import types

            shown.append(params.message)
            return types.ElicitResult(action=action, content={"confirm": True} if action == "accept" else None)
        return answer

    def count(**labels) -> float:
        return metric(sidecar_metrics(world), "mcp_warden_decisions_total", tool="list_sessions", **labels) or 0

    ran_before = count(decision="allow")
    async with client(world, elicitation=user("accept")) as s:
        err, text = await call(s, "list_sessions", {})
        assert not err, text
    assert len(shown) == 1 and "list_sessions" in shown[0], shown
    async with client(world, elicitation=user("decline")) as s:
        err, text = await call(s, "list_sessions", {})
        assert err and "declined this call" in text, text
    assert count(decision="allow") == ran_before + 1, "ran once, after the user accepted"
    m = sidecar_metrics(world)
    for result in ("user_confirmed", "user_declined"):
        assert metric(m, "mcp_warden_approvals_total", tool="list_sessions", result=result) == 1, result
    restored = patch_policy([{"op": "remove", "path": "/spec/tools/list_sessions/approval"}], kind="json")
    sidecar_on(world, restored)


async def anyio_sleep(seconds: float) -> None:
    import anyio
    await anyio.sleep(seconds)


def test_metrics_show_decisions_injections_and_reconciles(world):
    leader = world.leader()
    m = world.controller_metrics(leader)
    assert (metric(m, "mcp_warden_reconciliations_total", result="ok") or 0) >= 2
    hash_ = policy_status()["policyHash"]
    assert metric(m, "mcp_warden_policy_rendered_info", policy=f"{APP_NS}/python-interpreter", hash=hash_) == 1
    injected = sum(metric(world.controller_metrics(n), "mcp_warden_injections_total", result="injected") or 0
                   for n in world.controllers())
    assert injected >= 1
    s = sidecar_metrics(world)
    assert (metric(s, "mcp_warden_policy_reloads_total", result="ok") or 0) >= 2, "the first load and the edit"


# -- 3. operations ------------------------------------------------------------------------------


def test_the_operator_panels_and_alerts_on_a_real_prometheus(world):
    """The dashboard's operator panels (and the policy-hash table) evaluated by a real
    Prometheus scraping both controller replicas and the injected sidecar, with new admissions
    made while it watches; no alert fires on this healthy installation."""
    sys.path.insert(0, str(ROOT / "tests" / "prometheus"))
    import promlib

    rules = promlib.render_rules(world.dir)
    pod_name = mcp_pod()["metadata"]["name"]
    # The pods' own endpoints on the node's network, as a Prometheus in the cluster scrapes them.
    targets = [(f"{ip}:8080", {"namespace": NS, "pod": name}) for name, ip in world.controllers().items()]
    targets.append((f"{world.app_ip()}:9481", {"namespace": APP_NS, "pod": pod_name}))
    with promlib.prometheus(targets, rules) as prom:
        prom.wait_scraped()
        # The replicas are scraped at different instants, so a sum over them is extrapolated at
        # the end by up to one scrape interval of the window's average slope: 20 s of samples
        # before the admissions keep that under a tenth of a call.
        time.sleep(20)
        started = time.time() - 20
        # One pod the policy selects (injected) and one it does not (skipped).
        for name, app in (("panel-selected", "python-interpreter"), ("panel-other", "other")):
            kubectl("create", "-f", "-", input=json.dumps(restricted_pod(name, APP_NS, {"app": app})))
        rendered = patch_policy({"spec": {"tools": {"list_sessions": {"action": "deny", "reason": "Paused"}}}})
        sidecar_on(world, rendered)
        prom.wait_scraped()
        at = float(prom.query("max(timestamp(mcp_warden_reconciliations_total))")[0]["value"][1])
        range_s = int(at - started) + 3
        checked = set()
        for panel in promlib.panels():
            for target in panel["targets"]:
                expr = promlib.substitute(target["expr"], range_s, rate_interval=f"{range_s}s")
                controller_only = any(m in target["expr"] for m in (
                    "injections", "admission", "reconcil", "certificate", "policy_rendered_info"))
                if not controller_only and panel["title"] != "Policy hash per pod vs rendered":
                    continue
                result = prom.query(expr, at=at)
                assert result, f"panel {panel['title']!r} returned nothing: {expr}"
                for series in result:
                    missing = promlib.legend_labels(target.get("legendFormat")) - set(series["metric"])
                    assert not missing, f"{panel['title']}: series without {missing}: {series}"
                values = {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in result}
                title = panel["title"]
                if title == "Injections":
                    made = {dict(k)["result"]: round(v * range_s) for k, v in values.items() if v > 0}
                    assert made == {"injected": 1, "skipped": 1}, made
                elif title == "Reconciliations and errors" and "duration" not in (target.get("legendFormat") or ""):
                    by = {dict(k)["result"]: v * range_s for k, v in values.items()}
                    assert by["ok"] >= 1 and by["error"] == 0 and by["invalid"] == 0, by
                elif title in ("Admission latency", "Reconciliations and errors"):
                    assert all(0 < v < 10 for v in values.values() if v == v), values
                    assert any(v == v for v in values.values()), f"{title}: every quantile is NaN"
                elif title == "Webhook certificate expires in":
                    expiry = min(float(r["value"][1]) for r in prom.query(
                        "mcp_warden_webhook_certificate_expiry_timestamp_seconds", at=at))
                    assert abs(list(values.values())[0] - (expiry - at)) < 1 and expiry - at > 86400 * 300
                elif title == "Policy hash per pod vs rendered":
                    hashes = {dict(k).get("hash") for k in values}
                    assert hashes == {rendered}, f"sidecar and controller agree on the hash: {values}"
                checked.add(title)
        assert checked >= {"Injections", "Admission latency", "Reconciliations and errors",
                           "Webhook certificate expires in", "Policy hash per pod vs rendered"}, checked
        firing = prom.query('ALERTS{alertstate="firing"}', at=at)
        assert firing == [], f"no alert fires on a healthy installation: {firing}"
    for name in ("panel-selected", "panel-other"):
        kubectl("delete", "pod", "-n", APP_NS, name, "--wait=false", check=False)


def test_an_external_oidc_issuer_is_reached_from_the_controllers_image(world):
    """identity.jwt with jwksFrom on an HTTPS server whose CA is the test's own: the controller,
    in its scratch image, cannot verify it until the CA is given the documented way
    (controller.trustedCA), then renders the issuer's keys."""
    import http.server
    import ssl
    import threading

    ip = os.environ["MCP_WARDEN_NODE_IP"]
    d = world.dir / "issuer"
    d.mkdir()
    ssl_run = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)  # noqa: E731
    ssl_run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=journey issuer CA")
    ssl_run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=issuer")
    (d / "ext").write_text(f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n")
    ssl_run("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "tls.crt", "-days", "2", "-extfile", "ext")
    jwks = (ROOT / "tests" / "fixtures" / "identity" / "rsa-test-jwks.json").read_bytes()

    class Keys(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(jwks)))
            self.end_headers()
            self.wfile.write(jwks)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer((ip, 0), Keys)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "tls.crt", d / "tls.key")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://{ip}:{server.server_address[1]}/jwks"
    try:
        kubectl("create", "namespace", "oidc")
        apply({"apiVersion": "mcpwarden.dev/v1alpha1", "kind": "McpPolicy",
               "metadata": {"name": "external", "namespace": "oidc"},
               "spec": {"podSelector": {"matchLabels": {"app": "x"}}, "upstream": {"port": 8000},
                        "identity": {"jwt": {"issuer": "https://id.example.com", "audiences": ["mcp"],
                                             "jwksFrom": url}, "required": True},
                        "tools": {"read_file": {}}}})
        keys = lambda: condition(get_json("mcpp", "-n", "oidc", "external").get("status", {}), "KeysUnavailable")  # noqa: E731
        failed = wait("KeysUnavailable without the CA", lambda: (c := keys()).get("status") == "True" and c, timeout=90)
        assert "certificate" in failed["message"].lower() or "tls" in failed["message"].lower(), failed
        apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "issuer-ca", "namespace": NS},
               "data": {"ca.crt": (d / "ca.crt").read_text()}})
        helm("upgrade", RELEASE, str(ROOT / "charts" / "mcp-warden"), "-n", NS, "--reuse-values", "--wait",
             "--set", "controller.trustedCA.configMap=issuer-ca")
        kubectl("rollout", "status", "-n", NS, f"deployment/{RELEASE}", "--timeout=180s", timeout=190)
        fetched = wait("the keys fetched with the CA", lambda: (c := keys()).get("status") == "False" and c, timeout=120)
        assert fetched["reason"] == "Fetched", fetched
        cm = get_json("configmap", "-n", "oidc", "external-mcp-warden")
        assert json.loads(cm["data"]["jwks.json"])["keys"][0]["kid"] == "test-rsa"
    finally:
        server.shutdown()
        kubectl("delete", "namespace", "oidc", "--wait=false", check=False)


# -- 3. isolation on the wire -------------------------------------------------------------------

ISO = "isolation"


def probe(host: str, port: int) -> bool:
    """Whether a pod that no policy selects can open a TCP connection to host:port."""
    code = (f"import socket,sys\ntry:\n socket.create_connection(('{host}', {port}), timeout=2).close(); print('open')\n"
            f"except OSError as e:\n print('closed', e)")
    out = kubectl("exec", "-n", ISO, "probe", "--", "python3", "-c", code, timeout=30)
    return out.startswith("open")


def test_isolation_holds_on_the_wire_from_another_pod(world):
    """Servers that listen on every address, guarded with isolation left unset (the documented
    default), set to NetworkPolicy, and set to None: from another pod, the server's port on the
    pod IP is closed under the first two and open under the third, and the sidecar's port answers
    under all three. A NetworkPolicy that admits the server's port really reopens it, and the
    McpPolicy says IsolationIneffective."""
    kubectl("create", "namespace", ISO)
    kubectl("label", "namespace", ISO, "mcpwarden.dev/injection=enabled", "pod-security.kubernetes.io/enforce=restricted")
    cases = {"default": None, "explicit": "NetworkPolicy", "none": "None"}
    for name, isolation in cases.items():
        spec = {"podSelector": {"matchLabels": {"app": name}}, "upstream": {"port": 8000, "path": "/mcp"},
                "default": "allow"}
        if isolation:
            spec["isolation"] = isolation
        apply({"apiVersion": "mcpwarden.dev/v1alpha1", "kind": "McpPolicy",
               "metadata": {"name": name, "namespace": ISO}, "spec": spec})
    for name in cases:
        wait(f"McpPolicy {name} Ready", lambda n=name: condition(
            get_json("mcpp", "-n", ISO, n).get("status", {}), "Ready").get("status") == "True")
    # Every address, as many servers do; the probe selected by no policy.
    serve = ["-m", "http.server", "8000", "--bind", "0.0.0.0", "--directory", "/usr/share"]
    for name in cases:
        kubectl("create", "-f", "-", input=json.dumps(restricted_pod(name, ISO, {"app": name}, serve)))
    kubectl("create", "-f", "-", input=json.dumps(restricted_pod("probe", ISO, {"app": "probe"})))
    pods = {n: wait(f"pod {n} Ready", lambda n=n: (p := get_json("pod", "-n", ISO, n)) and ready(p) and p, timeout=120)
            for n in [*cases, "probe"]}
    nps = {n["metadata"]["name"] for n in get_json("networkpolicies", "-n", ISO)["items"]}
    assert nps == {"default-mcp-warden", "explicit-mcp-warden"}, f"isolation unset renders the default: {nps}"
    ip = {n: p["status"]["podIP"] for n, p in pods.items()}
    assert probe(ip["none"], 8000), "without isolation the server's port is open (the probe can see it)"
    for name in ("default", "explicit"):
        wait(f"{name}: the server's port closed to other pods", lambda n=name: not probe(ip[n], 8000), timeout=30)
    for name in cases:
        assert probe(ip[name], 9480), f"{name}: the sidecar's port answers"
    # A NetworkPolicy that admits the server's port to everyone: NetworkPolicies add up, so it
    # reopens the port, and the status says so.
    apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": "open-8000", "namespace": ISO},
           "spec": {"podSelector": {"matchLabels": {"app": "explicit"}}, "policyTypes": ["Ingress"],
                    "ingress": [{"ports": [{"port": 8000, "protocol": "TCP"}]}]}})
    wait("the port reopened by the other NetworkPolicy", lambda: probe(ip["explicit"], 8000), timeout=30)
    ineffective = wait("IsolationIneffective", lambda: (c := condition(
        get_json("mcpp", "-n", ISO, "explicit")["status"], "IsolationIneffective")).get("status") == "True" and c, timeout=60)
    assert "open-8000" in ineffective["message"], ineffective
    kubectl("delete", "networkpolicy", "-n", ISO, "open-8000")
    wait("closed again", lambda: not probe(ip["explicit"], 8000), timeout=30)
    wait("IsolationIneffective cleared", lambda: condition(
        get_json("mcpp", "-n", ISO, "explicit")["status"], "IsolationIneffective").get("status") == "False", timeout=60)
    kubectl("delete", "namespace", ISO, "--wait=false")


# -- 4. failures --------------------------------------------------------------------------------


def raw_call(url: str, tool: str, args: dict) -> str:
    """One tools/call on a fresh session, by hand: 'refused' when nothing listens, 'not called:
    …' when the session could not be opened (the call was never sent), else the text of the
    call's answer."""
    import urllib.error
    import urllib.request
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}

    def post(body: dict, extra: dict) -> tuple[dict, str]:
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={**headers, **extra}, method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return dict(r.headers), r.read().decode()
    try:
        h, _ = post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}}}, {})
        session = {k: v for k, v in h.items() if k.lower() == "mcp-session-id"}
        post({"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
    except urllib.error.HTTPError as e:
        return f"not called: HTTP {e.code} {e.read().decode()[:200]}"
    except OSError:
        return "refused"
    try:
        _, text = post({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": args}}, session)
        return text
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code} {e.read().decode()[:200]}"
    except OSError as e:
        return f"call failed: {e}"


@pytest.mark.anyio
async def test_a_killed_sidecar_restarts_and_the_server_is_never_reachable_unguarded(world):
    pod = mcp_pod()
    ip = pod["status"]["podIP"]
    server_before = next(c for c in pod["status"]["containerStatuses"] if c["name"] == "interpreter")
    hash_ = policy_status()["policyHash"]
    os.kill(container_pid(pod, "mcp-warden"), 9)
    killed = time.monotonic()
    seen = []
    # While it is down and as it comes back, a denied tool is never run: every try through the
    # Service is refused at the socket or answered by the sidecar's denial.
    while time.monotonic() - killed < 90:
        got = raw_call(f"{world.proxy}/mcp", "install_package", {"package_name": "x"})
        seen.append(got)
        assert got == "refused" or got.startswith("not called:") or "Package installs are disabled" in got, got
        if "Package installs are disabled" in got and "refused" in seen:
            break
        time.sleep(0.2)
    assert "refused" in seen and "Package installs are disabled" in seen[-1], \
        f"the sidecar went down and came back: {seen[:3]}…{seen[-3:]}"
    figure("sidecar killed → serving again", f"{time.monotonic() - killed:.1f} s")
    now = wait("the pod Ready again", lambda: (p := mcp_pod()) and ready(p) and p, timeout=60)
    side = next(c for c in now["status"]["initContainerStatuses"] if c["name"] == "mcp-warden")
    assert side["restartCount"] >= 1, side
    server = next(c for c in now["status"]["containerStatuses"] if c["name"] == "interpreter")
    assert server["containerID"] == server_before["containerID"] and server["restartCount"] == server_before["restartCount"], \
        "the server kept running"
    assert not tcp_open(ip, 8000), "the server listens on the pod's loopback only"
    assert metric(sidecar_metrics(world), "mcp_warden_policy_info", hash=hash_) == 1, "the restarted sidecar enforces the policy"
    async with client(world) as s:
        assert await call(s, "install_package", {"package_name": "x"}) == (True, "Package installs are disabled in this namespace")


def sidecar_metrics_of(pod: dict) -> str:
    return http_get(f"http://{pod['status']['podIP']}:9481/metrics")[1]


def serving(pod: dict) -> bool:
    """Whether the pod's sidecar answers an MCP initialize with the server's answer."""
    import urllib.error
    import urllib.request
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}}}
    req = urllib.request.Request(f"http://{pod['status']['podIP']}:9480/mcp", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                                          "Host": f"python-interpreter.{APP_NS}.svc"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def injected_ready_pods() -> list[dict]:
    return [p for p in ready_pods(APP_NS, "app=python-interpreter")
            if not p["metadata"].get("deletionTimestamp")
            and any(c["name"] == "mcp-warden" for c in p["spec"].get("initContainers", []))]


@pytest.mark.anyio
async def test_three_replicas_behind_the_service_hold_one_budget(world):
    """The example scaled to 3 replicas behind its Service: the controller renders the ready
    sidecars (peers.json) and a peer key (a Secret only the sidecars mount); clients whose
    connections kube-proxy spreads over the pods get the seed limit once, not three times."""
    policy = f"{APP_NS}/python-interpreter"
    started = time.monotonic()
    # Replicas behind one Service: the server runs sessionless (any pod answers any request), as
    # a server scaled out must.
    deploy = get_json("deployment", "-n", APP_NS, "python-interpreter")
    args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    sessionless = args[1].replace("mcp.run(", "mcp.settings.stateless_http = True; mcp.run(")
    kubectl("patch", "deployment", "-n", APP_NS, "python-interpreter", "--type", "json", "-p", json.dumps([
        {"op": "replace", "path": "/spec/template/spec/containers/0/args/1", "value": sessionless},
        {"op": "replace", "path": "/spec/replicas", "value": 3}]))
    pods = wait("three injected sessionless pods Ready", lambda: len(p := [
        q for q in injected_ready_pods() if "stateless_http" in q["spec"]["containers"][0]["args"][1]]) == 3 and p,
        timeout=240)
    secret = get_json("secret", "-n", APP_NS, "python-interpreter-mcp-warden")
    assert len(secret["data"]["peer.key"]) >= 44, "a 32-byte key"
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "McpPolicy"
    # Only the sidecar mounts the key.
    for c in pods[0]["spec"]["containers"]:
        assert all(m["name"] != "mcp-warden-peer" for m in c.get("volumeMounts", [])), c["name"]
    # The rollout done: the old pod gone (while it drains it still holds its own old peer set,
    # the documented bound of a membership change, not the steady state measured here).
    kubectl("rollout", "status", "-n", APP_NS, "deployment/python-interpreter", "--timeout=180s", timeout=190)
    wait("only the three new pods", lambda: len(get_json("pods", "-n", APP_NS, "-l", "app=python-interpreter")["items"]) == 3,
         timeout=120)
    # Ready is the containers started: the server (no probe of its own) may not listen yet.
    wait("every pod's server answering", lambda: all(serving(p) for p in pods), timeout=60)
    names = sorted(p["metadata"]["name"] for p in pods)
    wait("the controller renders the three sidecars", lambda: sorted(
        e["name"] for e in json.loads(get_json("configmap", "-n", APP_NS, "python-interpreter-mcp-warden")
                                      ["data"]["peers.json"])["peers"]) == names, timeout=60)
    wait("every sidecar knows its two peers and itself", lambda: all(
        metric(sidecar_metrics_of(p), "mcp_warden_peers", policy=policy) == 3 for p in pods), timeout=120)
    figure("scaled to 3 → every sidecar knows the peer set", f"{time.monotonic() - started:.1f} s")
    before = {p["metadata"]["name"]: sidecar_metrics_of(p) for p in pods}
    # 30 clients, each a new connection (kube-proxy picks a pod per connection), 3 calls each:
    # the anonymous caller's list_directory budget is 60 a minute across all three pods.
    allowed = refused = 0
    for _ in range(30):
        async with client(world) as s:
            for _ in range(3):
                err, text = await call(s, "list_directory", {"directory_path": "/workspace"})
                if err:
                    assert text.startswith("Rate limit exceeded: list_directory_rate allows 60 calls per minute"), text
                    refused += 1
                else:
                    allowed += 1
    assert (allowed, refused) == (60, 30)
    per_pod = {}
    hops = fallbacks = 0.0
    for p in pods:
        name, m = p["metadata"]["name"], sidecar_metrics_of(p)
        def delta(metric_name: str, **labels) -> float:
            return (metric(m, metric_name, **labels) or 0) - (metric(before[name], metric_name, **labels) or 0)
        per_pod[name] = sum(delta("mcp_warden_decisions_total", policy=policy, tool="list_directory", decision=d)
                            for d in ("allow", "rate_limited"))
        hops += sum(delta("mcp_warden_peer_requests_total", policy=policy, result=r) for r in ("taken", "limited"))
        fallbacks += sum(delta("mcp_warden_budget_fallbacks_total", policy=policy, reason=r)
                         for r in ("unreachable", "busy", "not_owner", "mismatch", "unknown_peers"))
    assert sum(per_pod.values()) == 90 and all(n > 0 for n in per_pod.values()), per_pod
    assert hops > 0 and fallbacks == 0, (hops, fallbacks)
    figure("3 replicas, 90 calls of a 60/minute limit over 30 connections", f"{allowed} allowed, spread {per_pod}")

    # An approval asked on one pod runs on another, once.
    asked_args = {"session_id": "replicas"}
    async with client(world) as s:
        err, text, d = await call_meta(s, "clear_session", asked_args)
    assert err and d["decision"] == "approval_required", text
    a = wait("the McpApproval", lambda: approval_for(d["approvalId"]), timeout=60)
    name, asked_on = a["metadata"]["name"], a["spec"]["pod"]
    kubectl("patch", "mcpa", "-n", APP_NS, name, "--type", "merge", "-p", '{"spec":{"decision":"Approved"}}')
    other = next(p for p in pods if p["metadata"]["name"] != asked_on)
    at = lambda pod: f"http://{pod['status']['podIP']}:9480"
    started = time.monotonic()
    while True:
        async with client(world, base=at(other)) as s:
            err, text, d = await call_meta(s, "clear_session", asked_args)
        if not err:
            break
        assert d.get("decision") == "approval_required", text
        assert time.monotonic() - started < 120, "the approval never reached the other pod"
        await anyio_sleep(0.2)
    figure("approved → the call runs on another replica than the one that asked", f"{time.monotonic() - started:.1f} s")
    for pod in pods:
        async with client(world, base=at(pod)) as s:
            err, text, d = await call_meta(s, "clear_session", asked_args)
        assert err and d["decision"] == "approval_required", f"uses: 1 ran again on {pod['metadata']['name']}"
    status = wait("phase Used, naming where it ran", lambda: (
        st := get_json("mcpa", "-n", APP_NS, name).get("status", {})).get("phase") == "Used" and st, timeout=60)
    assert status["used"] == 1 and status["usedOn"] == [other["metadata"]["name"]], status
    kubectl("patch", "deployment", "-n", APP_NS, "python-interpreter", "--type", "json", "-p", json.dumps([
        {"op": "replace", "path": "/spec/template/spec/containers/0/args/1", "value": args[1]},
        {"op": "replace", "path": "/spec/replicas", "value": 1}]))
    wait("one interpreter pod, with sessions again", lambda: len(p := get_json(
        "pods", "-n", APP_NS, "-l", "app=python-interpreter")["items"]) == 1 and ready(p[0])
        and "stateless_http" not in p[0]["spec"]["containers"][0]["args"][1], timeout=180)


def test_the_lease_moves_when_the_leader_pod_is_deleted_and_work_continues(world):
    leader = world.leader()
    duration = get_json("lease", "-n", NS, f"{RELEASE}-leader")["spec"]["leaseDurationSeconds"]
    t0 = time.monotonic()
    kubectl("delete", "pod", "-n", NS, leader, "--wait=false")
    # The other replica, or the pod the Deployment made in its place, whichever asks first.
    successor = wait("another replica to take the Lease", lambda: (l := world.leader()) != leader and l,
                     timeout=duration * 3)
    took = time.monotonic() - t0
    figure("leader pod deleted → Lease taken", f"{took:.1f} s")
    assert took <= duration + 5, f"the Lease moved after {took:.1f}s (duration {duration}s)"
    live = [p["metadata"]["name"] for p in get_json("pods", "-n", NS, "-l", CONTROLLER)["items"]
            if not p["metadata"].get("deletionTimestamp")]
    assert successor in live, f"{successor} is a live replica: {live}"
    # Reconciling continues on the successor, and the webhook still admits and injects.
    patch_policy([{"op": "remove", "path": "/spec/tools/read_file/action"},
                  {"op": "remove", "path": "/spec/tools/read_file/reason"}], kind="json")
    kubectl("scale", "deployment", "-n", APP_NS, "python-interpreter", "--replicas", "2")
    wait("a second injected pod Ready", lambda: len([
        p for p in ready_pods(APP_NS, "app=python-interpreter")
        if any(c["name"] == "mcp-warden" for c in p["spec"].get("initContainers", []))]) == 2, timeout=120)
    kubectl("scale", "deployment", "-n", APP_NS, "python-interpreter", "--replicas", "1")
    # The Deployment replaced the deleted pod; both run, and the Lease stays where it went.
    kubectl("rollout", "status", "-n", NS, f"deployment/{RELEASE}", "--timeout=120s", timeout=130)
    wait("two controllers Ready", lambda: len(world.controllers()) == 2, timeout=60)
    assert world.leader() == successor, "the Lease does not move back and forth"
    wait("one interpreter pod", lambda: len(get_json("pods", "-n", APP_NS, "-l", "app=python-interpreter")["items"]) == 1, timeout=90)


def test_with_the_webhook_down_opted_in_namespaces_refuse_pods(world):
    kubectl("scale", "deployment", "-n", NS, RELEASE, "--replicas", "0")
    wait("no controller pods", lambda: not get_json("pods", "-n", NS, "-l", CONTROLLER)["items"], timeout=90)
    pod = restricted_pod("while-down", APP_NS, {"app": "python-interpreter"})
    p = subprocess.run([os.environ["MCP_WARDEN_KUBECTL"], "create", "-f", "-"],
                       input=json.dumps(pod), capture_output=True, text=True, timeout=60)
    assert p.returncode != 0, "a pod was admitted with the webhook down"
    assert "mcp-warden" in p.stderr and "failed calling webhook" in p.stderr, p.stderr
    kubectl("create", "namespace", "journey-plain")
    try:
        pod["metadata"]["namespace"] = "journey-plain"
        out = kubectl("create", "-f", "-", input=json.dumps(pod))
        assert "created" in out, "namespaces that did not opt in are left alone"
    finally:
        kubectl("delete", "namespace", "journey-plain", "--wait=false")
    kubectl("scale", "deployment", "-n", NS, RELEASE, "--replicas", "2")
    kubectl("rollout", "status", "-n", NS, f"deployment/{RELEASE}", "--timeout=180s", timeout=190)
    wait("two controllers Ready", lambda: len(world.controllers()) == 2, timeout=60)


def test_the_controller_catches_up_after_an_api_server_restart(world):
    run = Path(os.environ["KUBECONFIG"]).parent
    pid = int((run / "kube-apiserver.pid").read_text())
    os.kill(pid, 15)
    try:  # a graceful stop waits for open watches; a stop that takes too long is a crash
        wait("the API server to stop", lambda: not Path(f"/proc/{pid}").exists(), timeout=15)
    except AssertionError:
        os.kill(pid, 9)
    time.sleep(3)  # the controllers see the connection drop
    up = subprocess.run([str(ROOT / "tests" / "cluster" / "up.sh")], capture_output=True, text=True, timeout=240)
    assert up.returncode == 0, up.stderr
    before = {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"]
              for p in get_json("pods", "-n", NS, "-l", CONTROLLER)["items"]}
    # The controllers' watches and the Lease come back with their retry backoff (up to about
    # half a minute after the API server answers again).
    started = time.monotonic()
    try:
        rendered = patch_policy({"spec": {"tools": {"list_sessions": {"action": "deny", "reason": "after the restart"}}}},
                                timeout=150)
    except AssertionError:
        logs = {n: kubectl("logs", "-n", NS, n, check=False)[-4000:] for n in world.controllers()}
        raise AssertionError(f"no render after the API server restart; controller logs: {logs}") from None
    figure("API server back → an edit rendered", f"{time.monotonic() - started:.1f} s")
    sidecar_on(world, rendered)
    after = {p["metadata"]["name"]: p["status"]["containerStatuses"][0]["restartCount"]
             for p in get_json("pods", "-n", NS, "-l", CONTROLLER)["items"]}
    assert after == before, f"no controller restarted: {before} → {after}"


# -- 5. upgrade and uninstall -----------------------------------------------------------------


def prometheus_operator_crds() -> list[Path]:
    """The prometheus-operator CRDs, from its Go module (the module proxy serves its source)."""
    out = subprocess.run(["go", "mod", "download", "-json", PROM_OPERATOR], capture_output=True, text=True,
                         timeout=300, cwd=ROOT / "tests" / "cluster")
    assert out.returncode == 0, out.stderr
    d = Path(json.loads(out.stdout)["Dir"]) / "example" / "prometheus-operator-crd"
    return [d / f"monitoring.coreos.com_{k}.yaml" for k in ("servicemonitors", "podmonitors", "prometheusrules")]


def test_helm_upgrade_with_the_monitoring_objects(world):
    for f in prometheus_operator_crds():
        kubectl("apply", "--server-side", "-f", str(f))
    for crd in ("servicemonitors", "podmonitors", "prometheusrules"):
        wait(f"{crd} established", lambda c=crd: any(
            x["type"] == "Established" and x["status"] == "True"
            for x in get_json("crd", f"{c}.monitoring.coreos.com")["status"]["conditions"]))
    helm("upgrade", RELEASE, str(ROOT / "charts" / "mcp-warden"), "-n", NS, "--reuse-values", "--wait",
         "--set", "serviceMonitor.enabled=true", "--set", "podMonitor.enabled=true",
         "--set", "prometheusRule.enabled=true", "--set", "grafanaDashboard.enabled=true")
    assert get_json("servicemonitor", "-n", NS, RELEASE)["spec"]["endpoints"]
    assert get_json("podmonitor", "-n", NS, f"{RELEASE}-sidecars")["spec"]["podMetricsEndpoints"]
    rules = get_json("prometheusrule", "-n", NS, RELEASE)["spec"]["groups"]
    assert sum(len(g["rules"]) for g in rules) >= 9
    cms = get_json("configmap", "-n", NS, "-l", "grafana_dashboard=1")["items"]
    assert cms and any(k.endswith(".json") for k in cms[0]["data"])


def test_uninstall_leaves_only_the_crd(world):
    kubectl("delete", "-f", str(EXAMPLE), "--wait=true", "--timeout=120s", timeout=130)
    helm("uninstall", RELEASE, "-n", NS, "--wait")
    kubectl("delete", "configmap", "-n", NS, "issuer-ca")  # the test's own, for controller.trustedCA

    def leftovers() -> list[str]:
        left = []
        for kind in ("configmaps", "secrets", "leases.coordination.k8s.io", "services", "deployments",
                     "serviceaccounts", "roles", "rolebindings", "networkpolicies", "events.events.k8s.io"):
            for o in get_json(kind, "-n", NS)["items"]:
                name = o["metadata"]["name"]
                if name in ("kube-root-ca.crt", "default") or kind.startswith("events"):
                    continue
                left.append(f"{kind}/{name}")
        for kind in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations", "clusterroles",
                     "clusterrolebindings"):
            left += [f"{kind}/{o['metadata']['name']}" for o in get_json(kind)["items"]
                     if "mcp-warden" in o["metadata"]["name"]]
        return left

    with contextlib.suppress(AssertionError):
        wait("nothing of mcp-warden left (garbage collection)", lambda: not leftovers(), timeout=60)
    assert leftovers() == []
    wait("the controller pods gone", lambda: not get_json("pods", "-n", NS)["items"], timeout=90)
    assert get_json("crd", "mcppolicies.mcpwarden.dev"), "the CRD stays (Helm never deletes CRDs)"
    assert get_json("crd", "mcpapprovals.mcpwarden.dev"), "the CRD stays (Helm never deletes CRDs)"
