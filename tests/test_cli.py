"""The `flask --app wsgi …` commands speak like gunicorn: one line for what went wrong, never a
traceback, and help that says what they run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.gunicorn import ROOT


def flask(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", "LOG_LEVEL": "WARNING", **env},
        capture_output=True, text=True, timeout=120,
    )


def gunicorn(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value"), [("MTTA_BUCKETS", "10,5"), ("SERVICE_PORT", "eighty")]
)
def test_a_bad_setting_prints_the_same_one_line_as_gunicorn(variable, value):
    done = flask("db", "upgrade", **{variable: value})
    assert done.returncode != 0
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"configuration error: {variable}={value!r} is invalid: ")
    served = gunicorn(**{variable: value})
    assert served.returncode != 0
    assert [line for line in served.stderr.splitlines() if variable in line] == done.stderr.splitlines()


def test_upgrade_to_an_unknown_revision_prints_one_line(tmp_path):
    done = flask("db", "upgrade", "9999", DATABASE_URL=f"sqlite:///{tmp_path}/cli.db")
    assert done.returncode != 0
    assert done.stderr.splitlines() == ["Error: Can't locate revision identified by '9999'"]


def test_upgrade_against_a_database_that_refuses_ends_with_one_line_and_no_traceback():
    done = flask("db", "upgrade", DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith("Error: database not reachable or refused the upgrade: ")


def test_background_run_help_names_all_four_jobs():
    done = flask("background", "run", "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for job in ("notification retries", "escalation checks", "idempotency key expiry", "counter rows",
                "webhook deliveries"):
        assert job in text
