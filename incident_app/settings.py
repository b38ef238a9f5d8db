"""The one place that reads the environment: every variable parsed and validated once, frozen.

A bad value raises SettingsError whose message is one line naming the variable and the value,
so start-up stops with something an operator can act on.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

DEFAULT_SQLITE_URL = "sqlite:///incident-management.db"


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message names variable and value."""


def _number(kind: Callable[[str], Any], *, minimum: float | None = None, maximum: float | None = None):
    def parse(raw: str) -> Any:
        value = kind(raw.strip())
        if value != value or value in (float("inf"), float("-inf")):  # NaN, infinities
            raise ValueError("not a finite number")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}")
        return value

    return parse


def _text(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return value


def normalize_database_url(raw: str) -> str:
    """A PostgreSQL or SQLite URL, with PostgreSQL pinned to the psycopg2 driver.

    SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the service is built on psycopg2
    (psycogreen makes it cooperative under gevent).
    """
    value = raw.strip()
    scheme, sep, rest = value.partition("://")
    if not sep or not scheme:
        raise ValueError("must be a URL such as postgresql://user@host/db or sqlite:///file.db")
    dialect, _, driver = scheme.partition("+")
    if dialect in ("postgres", "postgresql"):
        if driver not in ("", "psycopg2"):
            raise ValueError("the PostgreSQL driver is psycopg2: use postgresql://")
        return f"postgresql+psycopg2://{rest}"
    if dialect == "sqlite":
        return value
    raise ValueError("only PostgreSQL and SQLite are supported")


def _buckets(raw: str) -> tuple[float, ...]:
    values = tuple(float(part) for part in raw.split(","))
    if not values:
        raise ValueError("needs at least one bucket")
    if any(v != v or v <= 0 or v == float("inf") for v in values):
        raise ValueError("buckets must be positive finite numbers")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError("buckets must be strictly increasing")
    return values


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(part.strip() for part in raw.split(",") if part.strip())
    for origin in origins:
        if origin != "*":
            _url(origin)
    return origins


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _keys(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _directory(raw: str) -> str:
    value = raw.strip()
    if not os.path.isdir(value):
        raise ValueError("must be an existing directory")
    return value


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_SQLITE_URL
    service_name: str = "incident-management"
    service_port: int = 8002
    environment: str = "development"
    app_version: str = "1.0.0"
    db_pool_min: int = 1
    db_pool_max: int = 10
    escalation_timeout_minutes: float = 5.0
    escalation_check_seconds: float = 15.0
    http_client_timeout: float = 10.0
    health_memory_threshold: float = 90.0
    health_disk_threshold: float = 90.0
    cors_origins: tuple[str, ...] = ("http://localhost:8080", "http://localhost:3000")
    oncall_service_url: str = "http://oncall-service:8003"
    notification_service_url: str = "http://notification-service:8004"
    alert_service_url: str = "http://alert-ingestion:8001"
    mtta_buckets: tuple[float, ...] = (30, 60, 120, 300, 600, 1800, 3600)
    mttr_buckets: tuple[float, ...] = (300, 600, 1800, 3600, 7200, 14400, 28800)
    log_level: str = "INFO"
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    # Set by gunicorn.conf.py: prometheus_client's multiprocess mode, one set of files per worker.
    prometheus_multiproc_dir: str | None = None
    # Escalation checks, outbox retries and key expiry inside each gunicorn worker; off when a
    # separate `flask background run` process does them instead.
    background_work: bool = True
    # Seconds an analytics answer that was slow to compute is reused for the same filters; 0: never.
    analytics_cache_seconds: float = 30.0
    # Seconds a request's body may take to arrive after its headers: then 408 and the connection closes.
    request_timeout_seconds: float = 30.0

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (attribute, parse) in _VARIABLES.items():
            raw = env.get(name)
            if raw is None or (raw.strip() == "" and name != "API_KEYS"):
                continue
            try:
                values[attribute] = parse(raw)
            except (TypeError, ValueError) as exc:
                raise SettingsError(f"{name}={raw!r} is invalid: {exc}") from None

        environment = values.get("environment", cls.environment)
        if "database_url" not in values and environment == "production":
            raise SettingsError("DATABASE_URL is unset: production needs a PostgreSQL URL")
        pool_min = values.get("db_pool_min", cls.db_pool_min)
        pool_max = values.get("db_pool_max", cls.db_pool_max)
        if pool_min > pool_max:
            raise SettingsError(f"DB_POOL_MIN={pool_min} is invalid: larger than DB_POOL_MAX={pool_max}")
        return cls(**values)


# Environment variable → (Settings attribute, parser).
_VARIABLES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "DATABASE_URL": ("database_url", normalize_database_url),
    "SERVICE_NAME": ("service_name", _text),
    "SERVICE_PORT": ("service_port", _number(int, minimum=1, maximum=65535)),
    "ENVIRONMENT": ("environment", _text),
    "APP_VERSION": ("app_version", _text),
    "DB_POOL_MIN": ("db_pool_min", _number(int, minimum=0, maximum=1000)),
    "DB_POOL_MAX": ("db_pool_max", _number(int, minimum=1, maximum=1000)),
    "ESCALATION_TIMEOUT_MINUTES": ("escalation_timeout_minutes", _number(float, minimum=0.001)),
    "ESCALATION_CHECK_SECONDS": ("escalation_check_seconds", _number(float, minimum=0.1)),
    "HTTP_CLIENT_TIMEOUT": ("http_client_timeout", _number(float, minimum=0.01, maximum=300)),
    "HEALTH_MEMORY_THRESHOLD": ("health_memory_threshold", _number(float, minimum=0, maximum=100)),
    "HEALTH_DISK_THRESHOLD": ("health_disk_threshold", _number(float, minimum=0, maximum=100)),
    "CORS_ORIGINS": ("cors_origins", _origins),
    "ONCALL_SERVICE_URL": ("oncall_service_url", _url),
    "NOTIFICATION_SERVICE_URL": ("notification_service_url", _url),
    "ALERT_SERVICE_URL": ("alert_service_url", _url),
    "MTTA_BUCKETS": ("mtta_buckets", _buckets),
    "MTTR_BUCKETS": ("mttr_buckets", _buckets),
    "LOG_LEVEL": ("log_level", _log_level),
    "API_KEYS": ("api_keys", _keys),
    "PROMETHEUS_MULTIPROC_DIR": ("prometheus_multiproc_dir", _directory),
    "BACKGROUND_WORK": ("background_work", _flag),
    "ANALYTICS_CACHE_SECONDS": ("analytics_cache_seconds", _number(float, minimum=0)),
    "REQUEST_TIMEOUT_SECONDS": ("request_timeout_seconds", _number(float, minimum=0.1, maximum=3600)),
}
