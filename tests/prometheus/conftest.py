"""Metrics, alerts and the dashboard against a real Prometheus (Debian's `prometheus` package;
.ci/run installs it). Without prometheus and promtool on PATH these tests fail: they are the
check that what users see in Grafana is right."""

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def anyio_backend():
    return "asyncio"


def pytest_configure(config):
    missing = [b for b in ("prometheus", "promtool") if not shutil.which(b)]
    if missing:
        raise pytest.UsageError(f"{', '.join(missing)} not on PATH: apt-get install prometheus")
