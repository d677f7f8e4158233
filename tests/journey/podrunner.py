"""The pod runner: a stand-in for the kubelet in the test control plane, which has none.

It runs a stored pod's containers as local processes, the way the kubelet would start them:
exactly the container's command and args (the image's entrypoint resolved by a table the test
gives), its env (values and the downward-API fields the chart uses), and its ConfigMap volumes
projected into a directory the way the kubelet writes them (a timestamped directory, a `..data`
symlink swapped atomically on every change, and one symlink per key), kept in sync while the
pod runs (every `sync_seconds`, the kubelet's sync period), and its projected ServiceAccount
tokens issued by the API server's TokenRequest API for the audience the volume names, bound to
the pod. Two things differ from a node, both because every "pod" shares this machine's
loopback: listen addresses `0.0.0.0:PORT` become `127.0.0.1:PORT`, optionally with the port
remapped — or, given a `pod_ip` (a loopback address of its own, 127.x.y.z), `POD_IP:PORT`, with
that address written into the pod's status as the kubelet would, so other components reach the
pod by its IP — and a volume's mount path is replaced by its local directory in args.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    """Runs the built kubectl against KUBECONFIG and returns stdout."""
    exe = os.environ.get("MCP_WARDEN_KUBECTL", "kubectl")
    p = subprocess.run([exe, *args], input=input, capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {p.stderr.strip()}")
    return p.stdout


def get_json(*args: str) -> dict:
    return json.loads(kubectl("get", "-o", "json", *args))


class ConfigMapVolume:
    """A ConfigMap projected into a directory the way the kubelet does it."""

    def __init__(self, namespace: str, name: str, optional: bool, root: Path):
        self.namespace, self.name, self.optional, self.root = namespace, name, optional, root
        self.root.mkdir(parents=True, exist_ok=True)
        self.current: dict[str, str] | None = None

    def sync(self) -> bool:
        """Writes the ConfigMap's keys if they changed; returns whether it wrote."""
        out = kubectl("get", "configmap", "-n", self.namespace, self.name, "-o", "json", check=False)
        data = json.loads(out).get("data", {}) if out else {}
        if not out and not self.optional:
            raise RuntimeError(f"configmap {self.namespace}/{self.name} not found")
        if data == self.current:
            return False
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.") + f"{time.time_ns() % 10**9}"
        new = self.root / stamp
        new.mkdir()
        for key, value in data.items():
            (new / key).write_text(value)
        tmp = self.root / "..data_tmp"
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(stamp)
        old = os.readlink(self.root / "..data") if (self.root / "..data").is_symlink() else None
        os.rename(tmp, self.root / "..data")  # the atomic swap
        for key in data:
            link = self.root / key
            if not link.is_symlink():
                link.symlink_to(f"..data/{key}")
        for key in self.current or {}:
            if key not in data:
                (self.root / key).unlink(missing_ok=True)
        if old:
            shutil.rmtree(self.root / old, ignore_errors=True)
        self.current = data
        return True


@dataclass
class Container:
    name: str
    process: subprocess.Popen
    log: Path


@dataclass
class RunningPod:
    namespace: str
    name: str
    containers: dict[str, Container] = field(default_factory=dict)
    volumes: dict[str, ConfigMapVolume] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _sync: threading.Thread | None = None

    def kill(self, container: str | None = None) -> None:
        """Kills one container (or all, and stops the volume sync), as a node failure would."""
        names = [container] if container else list(self.containers)
        for n in names:
            c = self.containers[n]
            if c.process.poll() is None:
                c.process.kill()
                c.process.wait(timeout=10)
        if container is None:
            self._stop.set()

    def logs(self, container: str) -> str:
        return self.containers[container].log.read_text(errors="replace")


def _env(pod: dict, container: dict) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "valueFrom" in e and "fieldRef" in e["valueFrom"]:
            path = e["valueFrom"]["fieldRef"]["fieldPath"]
            value = {"metadata.name": pod["metadata"]["name"],
                     "metadata.namespace": pod["metadata"]["namespace"],
                     "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default")}.get(path)
            if value is None:
                raise RuntimeError(f"pod runner: unsupported fieldRef {path}")
            env[e["name"]] = value
        else:
            raise RuntimeError(f"pod runner: unsupported env source in {e}")
    return env


def _localise(arg: str, ports: dict[int, int], mounts: dict[str, Path], ip: str = "127.0.0.1") -> str:
    for mount, local in mounts.items():
        if arg.startswith(mount + "/") or arg == mount:
            arg = str(local) + arg[len(mount):]
        elif "=" in arg and arg.split("=", 1)[1].startswith(mount):
            k, v = arg.split("=", 1)
            arg = f"{k}={local}{v[len(mount):]}"
    if "0.0.0.0:" in arg:
        head, port = arg.rsplit("0.0.0.0:", 1)
        arg = f"{head}{ip}:{ports.get(int(port), int(port))}"
    return arg


def run_pod(pod: dict, images: dict[str, list[str]], workdir: Path,
            stand_ins: dict[str, list[str]] | None = None, ports: dict[int, int] | None = None,
            extra_env: dict[str, dict[str, str]] | None = None,
            sync_seconds: float = 1.0, pod_ip: str | None = None) -> RunningPod:
    """Starts every container of `pod` (init containers with `restartPolicy: Always`, i.e.
    native sidecars, first). `images` maps an image to its entrypoint as a local command, and
    the container's args follow it, as the kubelet runs them. `stand_ins` replace a container
    by name with a local command that runs the same server (for an application image that
    cannot run here as it is); `ports` remaps container ports to free local ones; `extra_env`
    adds environment per container (credentials a node would mount)."""
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    running = RunningPod(ns, name, ports=dict(ports or {}))
    workdir.mkdir(parents=True, exist_ok=True)
    for v in pod["spec"].get("volumes", []):
        if "projected" in v:
            d = workdir / "volumes" / v["name"]
            d.mkdir(parents=True, exist_ok=True)
            for src in v["projected"].get("sources", []):
                if "serviceAccountToken" in src:
                    sat = src["serviceAccountToken"]
                    audience = ["--audience", sat["audience"]] if sat.get("audience") else []
                    token = kubectl("create", "token", pod["spec"].get("serviceAccountName", "default"), "-n", ns,
                                    *audience, "--duration", f"{sat.get('expirationSeconds', 3600)}s",
                                    "--bound-object-kind", "Pod", "--bound-object-name", name).strip()
                    (d / sat["path"]).write_text(token)
                elif "configMap" in src:
                    data = get_json("configmap", "-n", ns, src["configMap"]["name"]).get("data", {})
                    for item in src["configMap"].get("items", [{"key": k, "path": k} for k in data]):
                        (d / item["path"]).write_text(data.get(item["key"], ""))
                elif "downwardAPI" in src:
                    for item in src["downwardAPI"].get("items", []):
                        field = item.get("fieldRef", {}).get("fieldPath")
                        value = {"metadata.namespace": ns, "metadata.name": name}.get(field)
                        if value is None:
                            raise RuntimeError(f"pod runner: unsupported downward API field {field}")
                        (d / item["path"]).write_text(value)
                else:
                    raise RuntimeError(f"pod runner: unsupported projected source in {v['name']}")
        elif "configMap" in v:
            cm = v["configMap"]
            vol = ConfigMapVolume(ns, cm["name"], cm.get("optional", False), workdir / "volumes" / v["name"])
            vol.sync()
            running.volumes[v["name"]] = vol
        else:
            d = workdir / "volumes" / v["name"]
            d.mkdir(parents=True, exist_ok=True)
    spec = pod["spec"]
    containers = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    containers += spec["containers"]
    for c in containers:
        mounts = {m["mountPath"]: workdir / "volumes" / m["name"] for m in c.get("volumeMounts", [])}
        if c["name"] in (stand_ins or {}):
            cmd = list(stand_ins[c["name"]])
        else:
            entry = images.get(c.get("image", ""))
            if entry is None or c.get("command"):
                raise RuntimeError(f"pod runner: cannot run {c['name']} ({c.get('image')}) here")
            cmd = [*entry, *(_localise(a, running.ports, mounts, pod_ip or "127.0.0.1") for a in c.get("args", []))]
        env = _env(pod, c)
        env.update((extra_env or {}).get(c["name"], {}))
        log = workdir / f"{c['name']}.log"
        proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=workdir)
        running.containers[c["name"]] = Container(c["name"], proc, log)

    def sync_loop() -> None:
        while not running._stop.wait(sync_seconds):
            for vol in running.volumes.values():
                try:
                    vol.sync()
                except Exception:  # the API server may be restarting; the kubelet retries too
                    pass

    if pod_ip:
        kubectl("patch", "pod", "-n", ns, name, "--subresource=status", "--type=merge", "-p",
                json.dumps({"status": {"podIP": pod_ip, "podIPs": [{"ip": pod_ip}]}}))
    running._sync = threading.Thread(target=sync_loop, daemon=True)
    running._sync.start()
    return running


def free_pod_ip() -> str:
    """A loopback address no other pod of this run uses (Linux routes all of 127/8 to lo)."""
    import random
    return f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
