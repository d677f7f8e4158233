"""The journey runs against the test cluster of tests/cluster (KUBECONFIG): the chart installed by a
current Helm, every pod run by the cluster's real node from images that tests/cluster/images.sh
built and loaded. Without a cluster it fails: .ci/run always starts one."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "journey"))


@pytest.fixture
def anyio_backend():
    return "asyncio"


def pytest_configure(config):
    missing = [v for v in ("KUBECONFIG", "MCP_WARDEN_CONTAINERD", "MCP_WARDEN_BIN",
                           "MCP_WARDEN_HELM_CURRENT", "MCP_WARDEN_KUBECTL") if not os.environ.get(v)]
    if missing:
        raise pytest.UsageError(
            f"the journey needs {', '.join(missing)}: start the control plane with "
            "`eval \"$(tests/cluster/up.sh)\"` and see docs/development.md")
