"""The image's default works: the service run as an unprivileged user, from a root-owned checkout
it cannot write, with DATABASE_URL unset, keeps its SQLite file in its writable working directory
(in the image, the volume /var/lib/incident-management; see the Dockerfile).

There is no container engine on the test machines, so this runs what the image runs, as the image
runs it: the user `nobody`, the code read-only on PYTHONPATH, the data directory as working
directory, `gunicorn -c <checkout>/gunicorn.conf.py wsgi:app`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest
import requests

from tests.support.gunicorn import ROOT, GunicornService

UNPRIVILEGED = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def as_nobody(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*UNPRIVILEGED, *argv], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=60
    )


def interpreter_for_nobody() -> tuple[str, str]:
    """A Python that `nobody` may run, and the PYTHONPATH that gives it the checkout and its packages.

    The test's own interpreter may live where only root can reach it (a home directory); then the
    system's interpreter of the same version runs with this environment's packages.
    """
    packages = os.pathsep.join(dict.fromkeys([str(ROOT), sysconfig.get_paths()["purelib"],
                                              sysconfig.get_paths()["platlib"]]))
    candidates = [sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"]
    for python in candidates:
        if as_nobody(python, "-c", "import gunicorn, incident_app", PYTHONPATH=packages).returncode == 0:
            return python, packages
    pytest.skip("no Python interpreter that the unprivileged user may run with this environment's packages")


@pytest.fixture
def data_dir() -> Path:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the service as an unprivileged user")
    path = Path(tempfile.mkdtemp(prefix="incident-data-"))  # outside pytest's root-only tmp tree
    os.chown(path, 65534, 65534)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_default_sqlite_database_works_as_an_unprivileged_user_on_a_read_only_checkout(data_dir, tmp_path):
    python, packages = interpreter_for_nobody()
    # The premise: the checkout is root's and the user cannot write into it (as /app in the image).
    assert as_nobody("test", "-w", str(ROOT)).returncode != 0
    log = tmp_path / "service.log"
    service = GunicornService(
        {
            "DATABASE_URL": None, "ENVIRONMENT": None, "PROMETHEUS_MULTIPROC_DIR": None, "HOME": str(data_dir),
            "PYTHONPATH": packages, "PYTHONDONTWRITEBYTECODE": "1",
            "ONCALL_SERVICE_URL": "http://127.0.0.1:9", "NOTIFICATION_SERVICE_URL": "http://127.0.0.1:9",
            "HTTP_CLIENT_TIMEOUT": "1", "LOG_LEVEL": "INFO",
        },
        workers=2, log_path=log, cwd=data_dir,
        command=[*UNPRIVILEGED, python, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "wsgi:app"],
    )
    service.start(timeout=60)
    try:
        assert requests.get(f"{service.url}/health/ready", timeout=5).json() == {"status": "ready"}
        created = requests.post(
            f"{service.url}/api/v1/incidents",
            json={"title": "Disk full", "service": "storage", "severity": "high"}, timeout=10,
        )
        assert created.status_code == 201, created.text
        read = requests.get(f"{service.url}/api/v1/incidents/{created.json()['incident_id']}", timeout=5)
        assert read.status_code == 200
    finally:
        service.stop()
    database = data_dir / "incident-management.db"
    assert database.exists() and database.stat().st_uid == 65534


def test_the_dockerfile_runs_what_this_test_runs():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")):]
    workdirs = [line.split()[1] for line in final if line.startswith("WORKDIR ")]
    assert workdirs[-1] == "/var/lib/incident-management"
    assert "VOLUME /var/lib/incident-management" in final
    assert "USER incident" in final
    assert any("PYTHONPATH=/app" in line for line in final)
    assert not any("DATABASE_URL" in line for line in lines if not line.startswith("#"))
    assert final[-1] == 'CMD ["gunicorn", "-c", "/app/gunicorn.conf.py", "wsgi:app"]'
    # The image installs what the service needs to run, not the test tools.
    assert "requirements-dev.txt" not in "\n".join(line for line in lines if not line.startswith("#"))
    assert "RUN pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.txt" in lines
