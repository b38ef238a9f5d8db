"""The service as production runs it: `gunicorn -c gunicorn.conf.py wsgi:app` in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from bench.run import free_port

ROOT = Path(__file__).resolve().parents[2]


class GunicornService:
    def __init__(
        self, env: dict[str, str], *, workers: int = 2, log_path: Path | None = None,
        cwd: Path = ROOT, command: list[str] | None = None,
    ) -> None:
        self.port = free_port()
        self.cwd = cwd
        # The whole command line; by default this interpreter's gunicorn with the checkout's config.
        self.command = command or [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
        self.env = {
            **os.environ,
            "SERVICE_PORT": str(self.port),
            "WEB_CONCURRENCY": str(workers),
            "LOG_LEVEL": "WARNING",
            **env,
        }
        # None in env: the variable is unset for the service (its default applies).
        self.env = {name: value for name, value in self.env.items() if value is not None}
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0, *, until: str = "/health/ready") -> GunicornService:
        """Start and wait until `until` answers 200: by default until the schema is migrated and
        the database answers (the workers serve from their first second, migrating meanwhile)."""
        # The child writes to the log itself; our handle is closed once it has it.
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command, cwd=self.cwd, env=self.env, stdout=log, stderr=log, start_new_session=True,
        )
        if log is not subprocess.DEVNULL:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}; {self._log_tail()}")
            try:
                if requests.get(f"{self.url}{until}", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not answer within {timeout}s; {self._log_tail()}")

    def _log_tail(self, lines: int = 15) -> str:
        """The log's last lines, for a failure's message: CI keeps the output, not the file."""
        if self.log_path is None or not self.log_path.exists():
            return "no log"
        tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"log {self.log_path}, last lines:\n" + "\n".join(tail)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            stop_process_group(self.process, sig)


def stop_process_group(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Signal a child started with start_new_session, and its children; SIGKILL after `timeout`."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
