"""Small helpers the journey uses against the test cluster of tests/cluster: kubectl, waiting,
HTTP, metrics text, the node's container runtime."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request


def kubectl(*args: str, input: str | None = None, check: bool = True, timeout: float = 60) -> str:
    """Runs the built kubectl against KUBECONFIG and returns stdout."""
    exe = os.environ.get("MCP_WARDEN_KUBECTL", "kubectl")
    p = subprocess.run([exe, *args], input=input, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {p.stderr.strip()}")
    return p.stdout


def get_json(*args: str) -> dict:
    return json.loads(kubectl("get", "-o", "json", *args))


def apply(obj: dict | list) -> None:
    items = obj if isinstance(obj, list) else [obj]
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def wait(what: str, fn, timeout: float = 60, every: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last})" if last else ""))


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the first series of `name` whose labels include `labels`."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(got.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def ready(pod: dict) -> bool:
    return pod.get("status", {}).get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def ready_pods(namespace: str, selector: str) -> list[dict]:
    return [p for p in get_json("pods", "-n", namespace, "-l", selector)["items"]
            if ready(p) and not p["metadata"].get("deletionTimestamp")]


def tcp_open(host: str, port: int, timeout: float = 2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def crictl(*args: str) -> str:
    """crictl against the node's containerd (the socket up.sh exports)."""
    exe = os.path.join(os.path.dirname(os.environ["MCP_WARDEN_KUBECTL"]), "crictl")
    sock = os.environ["MCP_WARDEN_CONTAINERD"]
    p = subprocess.run([exe, "--runtime-endpoint", f"unix://{sock}", *args],
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"crictl {' '.join(args)} failed: {p.stderr.strip()}")
    return p.stdout


def container_pid(pod: dict, container: str) -> int:
    """The host PID of a running container of a pod on the node."""
    sandbox = crictl("pods", "-q", "--name", pod["metadata"]["name"],
                     "--namespace", pod["metadata"]["namespace"]).split()[0]
    cid = crictl("ps", "-q", "--pod", sandbox, "--name", f"^{container}$", "--state", "Running").split()[0]
    return int(json.loads(crictl("inspect", cid))["info"]["pid"])
