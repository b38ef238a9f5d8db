"""SQLite's store: every operation plainly, one incident and one statement at a time."""

from __future__ import annotations

import json

from incident_app import documents
from incident_app.documents import Page
from incident_app.repository.pages import ListFilters, list_incidents
from incident_app.store import Store


class SqliteStore(Store):
    def page(self, filters: ListFilters, *, limit: int, offset: int) -> Page:
        with self.reading() as conn:
            rows, total = list_incidents(conn, filters, limit=limit, offset=offset)
        items = [documents.summary_json(documents.incident_document(row)) for row in rows]
        body = {"incidents": items, "total": total, "limit": limit, "offset": offset}
        return Page(json.dumps(body, separators=(",", ":")))
