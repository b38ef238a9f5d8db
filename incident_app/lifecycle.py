"""The incident's rules, with no I/O: severities, statuses and which transitions are allowed."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime

from incident_app.errors import InvalidTransition


class Severity(enum.StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class Status(enum.StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


SEVERITIES: tuple[str, ...] = tuple(s.value for s in Severity)
STATUSES: tuple[str, ...] = tuple(s.value for s in Status)
UNRESOLVED: tuple[str, ...] = (Status.OPEN.value, Status.ACKNOWLEDGED.value)


def more_severe(severity: str, than: str) -> bool:
    """Whether `severity` ranks above `than` (critical > high > medium > low): a grouped request
    raises its incident only then."""
    return SEVERITIES.index(severity) < SEVERITIES.index(than)

# to → the statuses it may be reached from.
_ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    Status.ACKNOWLEDGED.value: (Status.OPEN.value,),
    Status.RESOLVED.value: (Status.OPEN.value, Status.ACKNOWLEDGED.value),
    Status.OPEN.value: (),
}


@dataclass(frozen=True)
class Transition:
    """A status change that really happens: the request that holds one made it."""

    from_status: str
    to_status: str

    @property
    def acknowledges(self) -> bool:
        return self.to_status == Status.ACKNOWLEDGED.value

    @property
    def resolves(self) -> bool:
        return self.to_status == Status.RESOLVED.value


def note_entry(content: str, author: str | None, at: datetime) -> dict[str, str | None]:
    """A new note as the incident's `notes` array keeps it, named as PagerDuty's notes and the
    platform's web UI name them (`id`, `content`)."""
    return {"id": str(uuid.uuid4()), "content": content, "author": author,
            "created_at": at.isoformat(timespec="microseconds")}


def allowed_next(current: str) -> tuple[str, ...]:
    return tuple(to for to, sources in _ALLOWED_FROM.items() if current in sources)


def plan_transition(current: str, requested: str) -> Transition | None:
    """The transition from `current` to `requested`; None when already there (a safe retry)."""
    if current == requested:
        return None
    if current not in _ALLOWED_FROM.get(requested, ()):
        raise InvalidTransition(current, requested, allowed=allowed_next(current))
    return Transition(current, requested)
