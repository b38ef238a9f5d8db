"""The feed's cursor: where a follower stands, as an opaque string.

The feed is ordered by (writing transaction, event id), not by event id alone: ids are handed out
before their transactions commit, so they commit out of order, and "id > last seen" would skip an
event numbered 10 that commits after 11 was delivered. See repository/feed.py for why that order
is exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Self

_TEXT = re.compile(r"([0-9a-f]{1,16})-([0-9a-f]{1,16})")
_BIGINT = 2**63


class MalformedCursor(ValueError):
    """A cursor this service did not hand out."""


@dataclass(frozen=True, order=True)
class Cursor:
    xact_id: int  # the writing transaction (0 on SQLite, whose writers commit in id order)
    event_id: int

    def __str__(self) -> str:
        return f"{self.xact_id:x}-{self.event_id:x}"

    @classmethod
    def parse(cls, text: str) -> Self:
        match = _TEXT.fullmatch(text.strip())
        if match is None:
            raise MalformedCursor("not a cursor of this feed")
        xact_id, event_id = (int(part, 16) for part in match.groups())
        if xact_id >= _BIGINT or event_id >= _BIGINT:
            raise MalformedCursor("not a cursor of this feed")
        return cls(xact_id, event_id)
