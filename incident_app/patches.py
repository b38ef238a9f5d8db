"""What a PATCH changes, worked out from the incident as read: no I/O, so the use case can write it
optimistically and work it out again if another request got there first."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Row

from incident_app import lifecycle
from incident_app.repository import events


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Change:
    values: dict[str, Any]  # the columns to set; empty when the PATCH changes nothing
    timeline: list[dict[str, Any]]
    transition: lifecycle.Transition | None
    at: datetime
    note: dict[str, Any] | None  # the note appended, as stored


@dataclass(frozen=True)
class _Incident:
    """What `plan` reads of an incident."""

    id: Any
    status: str
    assigned_to: str | None = None
    notes: tuple[dict[str, Any], ...] = ()


_OPEN = _Incident(id=None, status=lifecycle.Status.OPEN.value)


@dataclass(frozen=True)
class Patch:
    status: str | None
    assigned_to: str | None  # or UNSET: not given
    note: str | None
    author: str | None

    @property
    def depends_on(self) -> tuple[str, ...]:
        """The columns a change is worked out from: it stands only while they are as read."""
        used = {"status": self.status is not None, "assigned_to": self.assigned_to is not UNSET,
                "notes": self.note is not None}
        return tuple(name for name, touched in used.items() if touched)

    @property
    def acknowledges_only(self) -> bool:
        """Whether all it asks is `status: acknowledged` (an author names who): the PATCH a store
        may make in one statement (Store.acknowledge_open)."""
        return self.status == lifecycle.Status.ACKNOWLEDGED.value and self.assigned_to is UNSET and self.note is None

    def acknowledged(self, now: datetime) -> Change:
        """What `plan` works out for this PATCH on an open incident it has not read: the change a store
        may write in one statement where the incident is still open (Store.acknowledge_open). Its
        event names no incident: the statement's row is it."""
        return self.plan(_OPEN, now)

    def plan(self, row: Row | _Incident, now: datetime) -> Change:
        """What this PATCH changes on `row` as of `now` (InvalidTransition if the lifecycle forbids it)."""
        values: dict[str, Any] = {}
        timeline: list[dict[str, Any]] = []
        transition = lifecycle.plan_transition(row.status, self.status) if self.status is not None else None
        if transition is not None:
            values["status"] = transition.to_status
            values["acknowledged_at" if transition.acknowledges else "resolved_at"] = now
            timeline.append(events.event(row.id, transition.to_status, at=now, actor=self.author,
                                         details={"from": transition.from_status}))
        if self.assigned_to is not UNSET and self.assigned_to != row.assigned_to:
            values["assigned_to"] = self.assigned_to
            timeline.append(events.event(row.id, "reassigned", at=now, actor=self.author,
                                         details={"from": row.assigned_to, "to": self.assigned_to}))
        note = None
        if self.note is not None:
            note = lifecycle.note_entry(self.note, self.author, now)
            values["notes"] = [*row.notes, note]
            # The event carries the note as the incident keeps it, so a follower can show it as it is.
            timeline.append(events.event(row.id, "note_added", at=now, actor=self.author, details=note))
        if values:
            values["updated_at"] = now
        return Change(values, timeline, transition, now, note)
