"""The data model in one file: SQLAlchemy Core tables and indexes, the migrations' target.

The columns of `incidents` are also the fields of the incident document (documents.py): a column's
`info` is its description in the OpenAPI document.

Tables live in the PostgreSQL schema `incidents`; on SQLite the engine maps that schema away
(see db.py), so the same Table objects serve both dialects.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import expression

from incident_app.lifecycle import SEVERITIES, STATUSES

SCHEMA = "incidents"

metadata = sa.MetaData(
    naming_convention={
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(sa.TypeDecorator):
    """Aware UTC datetimes in and out, whatever the dialect stores.

    SQLite keeps naive text, PostgreSQL answers in the session's time zone: both come back as UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONDocument = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

severity_level = sa.Enum(*SEVERITIES, name="severity_level", schema=SCHEMA)
incident_status = sa.Enum(*STATUSES, name="incident_status", schema=SCHEMA)

incidents = sa.Table(
    "incidents",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("incident_id", sa.String(255), nullable=False, unique=True, info={"example": "inc-3fa85f6457174562"}),
    sa.Column("title", sa.String(500), nullable=False),
    sa.Column("description", sa.Text()),
    sa.Column("service", sa.String(255), nullable=False),
    sa.Column("severity", severity_level, nullable=False),
    sa.Column("status", incident_status, nullable=False, server_default="open"),
    sa.Column("assigned_to", sa.String(255)),
    sa.Column("notes", JSONDocument, nullable=False, server_default=sa.text("'[]'")),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("acknowledged_at", UTCDateTime()),
    sa.Column("resolved_at", UTCDateTime()),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    schema=SCHEMA,
)

# Newest-first listing, alone or behind one equality filter, reads an index in order: no sort.
sa.Index("ix_incidents_created_at", incidents.c.created_at.desc(), incidents.c.incident_id.desc())
for _column in ("status", "severity", "service"):
    sa.Index(
        f"ix_incidents_{_column}_created_at",
        incidents.c[_column],
        incidents.c.created_at.desc(),
        incidents.c.incident_id.desc(),
    )

incident_alerts = sa.Table(
    "incident_alerts",
    metadata,
    sa.Column(
        "incident_id",
        sa.Uuid(),
        sa.ForeignKey(incidents.c.id, ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("alert_id", sa.Uuid(), primary_key=True),
    sa.Column("linked_at", UTCDateTime(), nullable=False),
    schema=SCHEMA,
)
sa.Index("ix_incident_alerts_alert_id", incident_alerts.c.alert_id)

# ----------------------------------------------------------------------------- reliability (0002)

incidents.append_column(sa.Column(
    "escalation_level", sa.Integer(), nullable=False, server_default="0",
    info={"description": "How many times it was escalated for staying open (0–3)."},
))
incidents.append_column(sa.Column("escalated_at", UTCDateTime(), info={"description": "When it was last escalated."}))

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a bigint.
_Serial = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# The timeline: one row per thing that happened, written in the transaction that made it happen.
incident_events = sa.Table(
    "incident_events",
    metadata,
    sa.Column("id", _Serial, primary_key=True, autoincrement=True),
    sa.Column("incident_id", sa.Uuid(), sa.ForeignKey(incidents.c.id, ondelete="CASCADE"), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(255)),
    sa.Column("details", JSONDocument, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    schema=SCHEMA,
)
sa.Index("ix_incident_events_incident_id", incident_events.c.incident_id, incident_events.c.id)

# The transactional outbox: a notification is a row before it is a request. `id` is the stable
# notification id the receiver deduplicates on; `next_attempt_at` doubles as a lease while in flight.
notification_outbox = sa.Table(
    "notification_outbox",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("incident_id", sa.Uuid(), sa.ForeignKey(incidents.c.id, ondelete="CASCADE"), nullable=False),
    sa.Column("payload", JSONDocument, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime()),
    schema=SCHEMA,
)
sa.Index(
    "ix_notification_outbox_state_next_attempt_at",
    notification_outbox.c.state, notification_outbox.c.next_attempt_at,
)
sa.Index("ix_notification_outbox_incident_id", notification_outbox.c.incident_id)

# Idempotency-Key of creations: reserved before the work, pointed at the incident when it commits.
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("request_hash", sa.String(64), nullable=False),
    sa.Column("incident_id", sa.Uuid(), sa.ForeignKey(incidents.c.id, ondelete="CASCADE")),
    sa.Column("reserved_at", UTCDateTime(), nullable=False),
    sa.Column("completed_at", UTCDateTime()),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    schema=SCHEMA,
)
sa.Index("ix_idempotency_keys_expires_at", idempotency_keys.c.expires_at)

# ----------------------------------------------------------------------------- incident counts (0003)

# Exact list totals without counting rows: incidents per (service, severity, status). The service
# never writes it; the database's triggers keep it (see migration 0003), so it stays exact whoever
# writes to incidents: this service, other replicas, an operator's SQL, a bulk load.
incident_counts = sa.Table(
    "incident_counts",
    metadata,
    sa.Column("service", sa.String(255), primary_key=True),
    sa.Column("severity", severity_level, primary_key=True),
    sa.Column("status", incident_status, primary_key=True),
    # PostgreSQL spreads a key over a few rows so that concurrent writers of one key rarely wait.
    sa.Column("shard", sa.SmallInteger(), primary_key=True),
    sa.Column("count", sa.BigInteger(), nullable=False),
    schema=SCHEMA,
)

# ----------------------------------------------------------------------------- live feed (0005)


class current_transaction_id(expression.FunctionElement):  # named as the SQL function it stands for
    """The id of the transaction that writes a row: what orders the live feed (incident_app/feed)."""

    type = sa.BigInteger()
    inherit_cache = True


@compiles(current_transaction_id, "postgresql")
def _current_transaction_id_postgresql(element, compiler, **kw) -> str:
    return "CAST(CAST(pg_current_xact_id() AS text) AS bigint)"


@compiles(current_transaction_id)
def _current_transaction_id_elsewhere(element, compiler, **kw) -> str:
    # SQLite's writers take turns: the serial id alone orders its feed.
    return "0"


incident_events.append_column(
    sa.Column("xact_id", sa.BigInteger(), nullable=False, server_default=current_transaction_id())
)
sa.Index("ix_incident_events_xact_id_id", incident_events.c.xact_id, incident_events.c.id)
# The incident as its list item's JSON text, as it stood after the event's change (0010): written
# by the event's own statement (repository/items.py); null for events written before 0010 or by hand.
incident_events.append_column(sa.Column("incident", sa.Text()))

# ----------------------------------------------------------------------------- alert grouping (0006)

incidents.append_column(sa.Column(
    "dedup_key", sa.String(255),
    info={"description": "Groups alerts of one problem: while this incident is unresolved, a create with the "
                         "same key is folded into it.", "example": "payment-api/error-rate"},
))
incidents.append_column(sa.Column(
    "grouped_count", sa.Integer(), nullable=False, server_default="0",
    info={"description": "How many creates were folded into this incident (its first not counted)."},
))
incidents.append_column(sa.Column("last_grouped_at", UTCDateTime(),
                                  info={"description": "When a create was last folded into it."}))

# Unresolved incidents with a key, as the partial unique index below states it: an ON CONFLICT naming
# the index must repeat its predicate, so both take this one text (migration 0006 writes it too).
# Both indexes leave out incidents without a key, so a create without one writes neither.
UNRESOLVED = sa.text("dedup_key IS NOT NULL AND status <> 'resolved'")
HAS_KEY = sa.text("dedup_key IS NOT NULL")
# One unresolved incident per key: of concurrent creates with one key, the database lets one insert.
sa.Index("uq_incidents_dedup_key_unresolved", incidents.c.dedup_key, unique=True,
         postgresql_where=UNRESOLVED, sqlite_where=UNRESOLVED)
sa.Index("ix_incidents_dedup_key_created_at", incidents.c.dedup_key, incidents.c.created_at.desc(),
         incidents.c.incident_id.desc(), postgresql_where=HAS_KEY, sqlite_where=HAS_KEY)

idempotency_keys.append_column(sa.Column(
    "grouped", sa.Boolean(), nullable=False, server_default=sa.false(),
))

# ----------------------------------------------------------------------------- webhooks (0007)

# A list, or SQL NULL for "every type" (not JSON null: the database's trigger tests IS NULL).
_JSONList = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")

webhooks = sa.Table(
    "webhooks",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("description", sa.Text()),
    sa.Column("types", _JSONList),
    sa.Column("service", sa.String(255)),
    sa.Column("severity", severity_level),
    # Kept as given out (`whsec_…`): it signs every delivery, so it cannot be hashed.
    sa.Column("secret", sa.String(255), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    schema=SCHEMA,
)

# One row per (subscription, matching event), written by migration 0007's trigger in the event's
# transaction; claimed like the notification outbox (`state`, `next_attempt_at` as the lease). `id`
# is the `webhook-id` of every attempt; `body` is written at the first attempt and sent by every retry.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("webhook_id", sa.Uuid(), sa.ForeignKey(webhooks.c.id, ondelete="CASCADE"), nullable=False),
    sa.Column("event_id", _Serial, sa.ForeignKey(incident_events.c.id, ondelete="CASCADE"), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime()),
    sa.Column("body", sa.Text()),
    sa.Column("last_attempt_at", UTCDateTime()),
    sa.Column("last_status", sa.String(16)),
    schema=SCHEMA,
)
sa.Index(
    "ix_webhook_deliveries_state_next_attempt_at",
    webhook_deliveries.c.state, webhook_deliveries.c.next_attempt_at,
)
sa.Index("ix_webhook_deliveries_webhook_id_state", webhook_deliveries.c.webhook_id, webhook_deliveries.c.state)
sa.Index(
    "ix_webhook_deliveries_webhook_id_last_attempt_at",
    webhook_deliveries.c.webhook_id, webhook_deliveries.c.last_attempt_at,
)
sa.Index("ix_webhook_deliveries_event_id", webhook_deliveries.c.event_id)

# ----------------------------------------------------------------------------- analytics (0008)


class seconds_between(expression.FunctionElement):  # named as the SQL function it stands for
    """`later` − `earlier` in seconds (float), NULL when `later` is: an incident's MTTA or MTTR. The
    analytics queries and the indexes below use this one expression, so the planner reads the
    durations from the indexes instead of computing them row by row."""

    type = sa.Float()
    inherit_cache = True


@compiles(seconds_between, "postgresql")
def _seconds_between_postgresql(element, compiler, **kw) -> str:
    later, earlier = element.clauses
    # date_part is float8; EXTRACT is numeric, several times as costly over a million rows.
    return f"date_part('epoch', {compiler.process(later, **kw)} - {compiler.process(earlier, **kw)})"


@compiles(seconds_between)
def _seconds_between_elsewhere(element, compiler, **kw) -> str:
    # SQLite keeps datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' text. julianday() would lose the
    # microseconds to float rounding, so whole seconds and the fraction are taken apart; the whole
    # part is cut off first, since SQLite rounds .999999 up to the next second.
    later, earlier = (compiler.process(value, **kw) for value in element.clauses)

    def whole(value: str) -> str:
        return f"CAST(strftime('%s', substr({value}, 1, 19)) AS INTEGER)"

    def fraction(value: str) -> str:
        return f"CAST(substr({value}, 20) AS REAL)"

    return f"(({whole(later)} - {whole(earlier)}) + ({fraction(later)} - {fraction(earlier)}))"


MTTA_SECONDS = seconds_between(incidents.c.acknowledged_at, incidents.c.created_at)
MTTR_SECONDS = seconds_between(incidents.c.resolved_at, incidents.c.created_at)

# A time window (`since`/`until`) is a range of this index, read alone (an index-only scan): every
# column the analytics read, with both durations already computed.
sa.Index(
    "ix_incidents_analytics_window",
    incidents.c.created_at, MTTA_SECONDS, MTTR_SECONDS,
    postgresql_include=["service", "severity", "status", "acknowledged_at", "resolved_at"],
)
# Each duration in order: with no filter, an exact percentile is the value at one or two ranks,
# found by walking the index from its nearer end instead of sorting every value. The partial
# predicate keeps open incidents (every create) out of them; the included columns let PostgreSQL
# answer from the index alone (it checks the expression's columns, not the expression).
for _name, _seconds, _later in (("mtta", MTTA_SECONDS, "acknowledged_at"), ("mttr", MTTR_SECONDS, "resolved_at")):
    sa.Index(
        f"ix_incidents_{_name}_seconds",
        _seconds,
        postgresql_include=["created_at", _later],
        postgresql_where=incidents.c[_later].is_not(None),
        sqlite_where=incidents.c[_later].is_not(None),
    )

# ----------------------------------------------------------------------------- analytics by day (0011)

# A time window's counts and averages without reading each incident of its whole days: per UTC day
# of `created_at`, service and severity, how many incidents are in each status, how many have each
# duration and its sum in microseconds. Kept exact by the database's triggers (migration 0011), as
# incident_counts is; the service only reads it (repository/analytics.py).
incident_days = sa.Table(
    "incident_days",
    metadata,
    sa.Column("day", sa.Date(), primary_key=True),
    sa.Column("service", sa.String(255), primary_key=True),
    sa.Column("severity", severity_level, primary_key=True),
    sa.Column("shard", sa.SmallInteger(), primary_key=True),  # as incident_counts'
    # The statuses are columns, so that an acknowledge or a resolve changes one row, not two.
    *(sa.Column(f"{status}_count", sa.BigInteger(), nullable=False) for status in STATUSES),
    sa.Column("mtta_us", sa.BigInteger(), nullable=False),
    sa.Column("mtta_count", sa.BigInteger(), nullable=False),
    sa.Column("mttr_us", sa.BigInteger(), nullable=False),
    sa.Column("mttr_count", sa.BigInteger(), nullable=False),
    schema=SCHEMA,
)

# ------------------------------------------------------------------ windowed percentiles (0012)

# PostgreSQL only (POSTGRESQL_ONLY): a window's percentiles without sorting its durations. Each
# duration falls in one of migration 0012's fixed buckets (duration_bucket: 16 per doubling from a
# millisecond); per UTC day of `created_at` the database's triggers keep how many durations of each
# kind every bucket holds, and an index per duration orders the incidents by bucket, then created_at.
# repository/analytics.py finds each rank's bucket from the counts and sorts only that bucket's
# durations in the window. SQLite ranks from the durations' own indexes (0008) instead.
POSTGRESQL_ONLY = "postgresql_only"


def made_on(item: sa.Table | sa.Index, dialect: str) -> bool:
    """Whether the migrations make this table or index on `dialect`."""
    return dialect == "postgresql" or not item.info.get(POSTGRESQL_ONLY)


def duration_bucket(seconds: sa.ColumnElement[float]) -> sa.ColumnElement[int]:
    return sa.func.incidents.duration_bucket(seconds, type_=sa.Integer())


incident_duration_buckets = sa.Table(
    "incident_duration_buckets",
    metadata,
    sa.Column("day", sa.Date(), primary_key=True),
    sa.Column("bucket", sa.Integer(), primary_key=True),
    sa.Column("shard", sa.Integer(), primary_key=True),  # the writing backend's pid; 0 once folded
    sa.Column("mtta_count", sa.BigInteger(), nullable=False),
    sa.Column("mttr_count", sa.BigInteger(), nullable=False),
    schema=SCHEMA,
    info={POSTGRESQL_ONLY: True},
)
# Each duration's bucket (MTTA's, MTTR's), as the bucket indexes hold it.
DURATION_BUCKETS = (duration_bucket(MTTA_SECONDS), duration_bucket(MTTR_SECONDS))
for _name, _bucket, _later in zip(("mtta", "mttr"), DURATION_BUCKETS, ("acknowledged_at", "resolved_at"), strict=True):
    sa.Index(
        f"ix_incidents_{_name}_bucket",
        _bucket, incidents.c.created_at,
        postgresql_include=[_later],
        postgresql_where=incidents.c[_later].is_not(None),
        info={POSTGRESQL_ONLY: True},
    )
