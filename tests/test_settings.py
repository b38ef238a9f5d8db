"""Configuration: every variable parsed once, defaults as the contract gives them, one clear line
for a bad value."""

import os
import subprocess
import sys

import pytest

from incident_app.settings import DEFAULT_SQLITE_URL, Settings, SettingsError, available_cpus, cgroup_cpu_limit
from tests.support.gunicorn import ROOT


def test_defaults_match_the_contract():
    s = Settings.from_env({})
    assert s.database_url == DEFAULT_SQLITE_URL
    assert (s.service_name, s.service_port, s.environment, s.app_version) == (
        "incident-management", 8002, "development", "1.0.0",
    )
    assert (s.db_pool_min, s.db_pool_max) == (1, 10)
    assert s.escalation_timeout_minutes == 5 and s.escalation_check_seconds == 15
    assert s.http_client_timeout == 10.0
    assert (s.health_memory_threshold, s.health_disk_threshold) == (90.0, 90.0)
    assert s.cors_origins == ("http://localhost:8080", "http://localhost:3000")
    assert s.oncall_service_url == "http://oncall-service:8003"
    assert s.notification_service_url == "http://notification-service:8004"
    assert s.alert_service_url == "http://alert-ingestion:8001"
    assert s.mtta_buckets == (30, 60, 120, 300, 600, 1800, 3600)
    assert s.mttr_buckets == (300, 600, 1800, 3600, 7200, 14400, 28800)
    assert s.log_level == "INFO"
    assert s.api_keys == ()
    assert s.analytics_cache_seconds == 30
    assert s.web_concurrency is None  # gunicorn.conf.py: available_cpus()


def test_every_variable_is_read():
    s = Settings.from_env({
        "DATABASE_URL": "postgresql://u@db:5432/incidents",
        "SERVICE_NAME": "inc", "SERVICE_PORT": "9000", "ENVIRONMENT": "staging", "APP_VERSION": "2.3.4",
        "DB_POOL_MIN": "2", "DB_POOL_MAX": "20", "ESCALATION_TIMEOUT_MINUTES": "0.1",
        "ESCALATION_CHECK_SECONDS": "1", "HTTP_CLIENT_TIMEOUT": "2.5",
        "HEALTH_MEMORY_THRESHOLD": "80", "HEALTH_DISK_THRESHOLD": "70",
        "CORS_ORIGINS": "https://ui.example.com, http://localhost:3000",
        "ONCALL_SERVICE_URL": "http://oncall:1/", "NOTIFICATION_SERVICE_URL": "https://notify:2",
        "ALERT_SERVICE_URL": "http://alerts:3", "MTTA_BUCKETS": "1,2.5,10", "MTTR_BUCKETS": "5,50",
        "LOG_LEVEL": "debug", "API_KEYS": "k1, k2", "ANALYTICS_CACHE_SECONDS": "2.5",
        "WEB_CONCURRENCY": "3",
    })
    assert s.database_url == "postgresql+psycopg2://u@db:5432/incidents"
    assert (s.service_name, s.service_port, s.environment, s.app_version) == ("inc", 9000, "staging", "2.3.4")
    assert (s.db_pool_min, s.db_pool_max) == (2, 20)
    assert s.escalation_timeout_minutes == 0.1 and s.escalation_check_seconds == 1
    assert s.http_client_timeout == 2.5
    assert (s.health_memory_threshold, s.health_disk_threshold) == (80, 70)
    assert s.cors_origins == ("https://ui.example.com", "http://localhost:3000")
    assert s.oncall_service_url == "http://oncall:1"  # trailing slash dropped: paths are appended
    assert s.notification_service_url == "https://notify:2"
    assert s.mtta_buckets == (1, 2.5, 10) and s.mttr_buckets == (5, 50)
    assert s.log_level == "DEBUG"
    assert s.api_keys == ("k1", "k2")
    assert s.analytics_cache_seconds == 2.5
    assert s.web_concurrency == 3


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SERVICE_PORT", "eighty"),
        ("SERVICE_PORT", "70000"),
        ("DB_POOL_MAX", "0"),
        ("HTTP_CLIENT_TIMEOUT", "nan"),
        ("HTTP_CLIENT_TIMEOUT", "-1"),
        ("MTTA_BUCKETS", "60,30"),
        ("MTTR_BUCKETS", "300,300"),
        ("MTTA_BUCKETS", "a,b"),
        ("LOG_LEVEL", "LOUD"),
        ("ONCALL_SERVICE_URL", "oncall-service:8003"),
        ("NOTIFICATION_SERVICE_URL", "ftp://notify"),
        ("DATABASE_URL", "mysql://db/incidents"),
        ("DATABASE_URL", "not a url"),
        ("CORS_ORIGINS", "localhost:3000"),
        ("HEALTH_DISK_THRESHOLD", "101"),
        ("ANALYTICS_CACHE_SECONDS", "-1"),
        ("ANALYTICS_CACHE_SECONDS", "half a minute"),
        ("WEB_CONCURRENCY", "two"),
        ("WEB_CONCURRENCY", "0"),
    ],
)
def test_bad_value_names_variable_and_value(variable, value):
    with pytest.raises(SettingsError) as bad:
        Settings.from_env({variable: value})
    message = str(bad.value)
    assert variable in message and repr(value) in message
    assert "\n" not in message


def test_analytics_cache_seconds_zero_turns_reuse_off():
    assert Settings.from_env({"ANALYTICS_CACHE_SECONDS": "0"}).analytics_cache_seconds == 0


def test_pool_min_above_max_is_refused():
    with pytest.raises(SettingsError, match="DB_POOL_MIN"):
        Settings.from_env({"DB_POOL_MIN": "5", "DB_POOL_MAX": "2"})


def test_production_without_database_url_stops():
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        Settings.from_env({"ENVIRONMENT": "production"})
    assert Settings.from_env({"ENVIRONMENT": "production", "DATABASE_URL": "postgresql://db/x"}).is_production


def test_environment_is_a_free_label():
    assert Settings.from_env({"ENVIRONMENT": "qa-eu-1"}).environment == "qa-eu-1"


def test_gunicorn_start_stops_with_one_line_on_a_bad_value():
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", "MTTA_BUCKETS": "10,5"},
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "MTTA_BUCKETS" in line]
    assert lines == ["configuration error: MTTA_BUCKETS='10,5' is invalid: buckets must be strictly increasing"]


@pytest.mark.parametrize(
    ("cpu_max", "cpus"),
    [("max 100000\n", None), ("200000 100000\n", 2), ("150000 100000\n", 2), ("50000 100000\n", 1),
     ("400000 200000", 2), ("100000", 1)],
)
def test_the_cgroup_cpu_quota_is_read_as_whole_cpus(cpu_max, cpus):
    assert cgroup_cpu_limit(cpu_max) == cpus


def test_worker_count_defaults_to_the_containers_cpus_not_the_hosts(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    limited = tmp_path / "cpu.max"
    limited.write_text("100000 100000\n")
    assert available_cpus(str(limited)) == 1
    unlimited = tmp_path / "unlimited"
    unlimited.write_text("max 100000\n")
    assert available_cpus(str(unlimited)) == affinity
    generous = tmp_path / "generous"
    generous.write_text(f"{(affinity + 8) * 100000} 100000\n")
    assert available_cpus(str(generous)) == affinity
    assert available_cpus(str(tmp_path / "absent")) == affinity
    garbled = tmp_path / "garbled"
    garbled.write_text("lots\n")
    assert available_cpus(str(garbled)) == affinity
