"""GET /api/v1/incidents: newest first, filters, paging with a true total, and 422 for bad queries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

URL = "/api/v1/incidents"
T0 = datetime(2026, 11, 26, 10, 0, 0, 123456, tzinfo=UTC)
SUMMARY_FIELDS = {
    "id", "incident_id", "title", "description", "service", "severity", "status", "assigned_to", "notes",
    "created_at", "acknowledged_at", "resolved_at", "updated_at", "mtta_seconds", "mttr_seconds",
    "escalation_level", "escalated_at",  # contract section 6
    "dedup_key", "grouped_count", "last_grouped_at",  # contract section 8
}


@pytest.fixture
def create(create_incident, clock):
    """An incident created at `when` (T0 unless given), by default a high one of payment-api."""

    def make(*, when: datetime = T0, title: str = "Error rate above 5%", service: str = "payment-api",
             severity: str = "high", **extra) -> dict:
        clock.set(when)
        return create_incident(title=title, service=service, severity=severity, **extra)

    return make


def listed(client, query: str = "") -> dict:
    response = client.get(f"{URL}{query}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def ids(page: dict) -> list[str]:
    return [i["incident_id"] for i in page["incidents"]]


@pytest.fixture
def mixed(client, app, create) -> dict[str, dict]:
    """Six incidents a minute apart across services, severities and statuses."""
    specs = [
        ("a", "payment-api", "critical", "open"),
        ("b", "payment-api", "high", "acknowledged"),
        ("c", "checkout", "critical", "resolved"),
        ("d", "checkout", "low", "open"),
        ("e", "payment-api", "critical", "resolved"),
        ("f", "search", "medium", "acknowledged"),
    ]
    return {
        name: create(when=T0 + timedelta(minutes=i), title=name, service=service, severity=sev,
                     status=status)
        for i, (name, service, sev, status) in enumerate(specs)
    }


def names(page: dict) -> list[str]:
    return [i["title"] for i in page["incidents"]]


# --------------------------------------------------------------------------- order and shape


def test_empty_database_lists_nothing_with_defaults(client):
    assert listed(client) == {"incidents": [], "total": 0, "limit": 50, "offset": 0}


def test_lists_newest_first(client, mixed):
    assert names(listed(client)) == ["f", "e", "d", "c", "b", "a"]


def test_same_created_at_is_ordered_by_incident_id_descending(client, app, create):
    made = [create(when=T0, title=f"tie {i}") for i in range(5)]
    later = create(when=T0 + timedelta(microseconds=1), title="later")
    page = listed(client)
    tied = sorted((i["incident_id"] for i in made), reverse=True)
    assert ids(page) == [later["incident_id"], *tied]


def test_list_items_carry_every_field_except_alerts_and_alert_ids(client, app, create):
    made = create(status="acknowledged", alert_ids=["3fa85f64-5717-4562-b3fc-2c963f66afa6"],
                  description="details")
    [item] = listed(client)["incidents"]
    assert set(item) == SUMMARY_FIELDS
    expected = {k: v for k, v in made.items() if k not in ("alerts", "alert_ids")}
    assert item == expected
    assert item["created_at"] == "2026-11-26T10:00:00.123456+00:00"


# --------------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=open", ["d", "a"]),
        ("status=acknowledged", ["f", "b"]),
        ("status=resolved", ["e", "c"]),
        ("severity=critical", ["e", "c", "a"]),
        ("severity=medium", ["f"]),
        ("severity=high", ["b"]),
        ("service=payment-api", ["e", "b", "a"]),
        ("service=checkout", ["d", "c"]),
        ("service=payment", []),  # exact match, not a prefix
        ("service=PAYMENT-API", []),
        ("status=resolved&severity=critical", ["e", "c"]),
        ("status=open&service=payment-api", ["a"]),
        ("severity=critical&service=checkout", ["c"]),
        ("status=resolved&severity=critical&service=payment-api", ["e"]),
        ("status=acknowledged&severity=critical", []),
    ],
)
def test_filters_alone_and_combined(client, mixed, query, expected):
    page = listed(client, f"?{query}")
    assert names(page) == expected
    assert page["total"] == len(expected)


def test_service_filter_with_url_escapes(client, app, create):
    create(service="team a/b & c", title="odd")
    create(service="team a", title="plain")
    assert names(listed(client, "?service=team%20a%2Fb%20%26%20c")) == ["odd"]


# --------------------------------------------------------------------------- paging


def test_limit_and_offset_page_through_with_total(client, mixed):
    first = listed(client, "?limit=2")
    second = listed(client, "?limit=2&offset=2")
    third = listed(client, "?limit=2&offset=4")
    assert (names(first), names(second), names(third)) == (["f", "e"], ["d", "c"], ["b", "a"])
    for page, offset in ((first, 0), (second, 2), (third, 4)):
        assert (page["total"], page["limit"], page["offset"]) == (6, 2, offset)


def test_offset_past_the_end_is_empty_and_total_still_counts(client, mixed):
    page = listed(client, "?offset=100&limit=10")
    assert page == {"incidents": [], "total": 6, "limit": 10, "offset": 100}
    page = listed(client, "?offset=6")
    assert (page["incidents"], page["total"]) == ([], 6)


def test_partial_last_page_with_filter_keeps_the_filtered_total(client, mixed):
    page = listed(client, "?severity=critical&limit=2&offset=2")
    assert (names(page), page["total"]) == (["a"], 3)


def test_default_limit_is_50(client, app, create):
    for i in range(55):
        create(when=T0 + timedelta(seconds=i), title=f"n{i}")
    page = listed(client)
    assert (len(page["incidents"]), page["total"], page["limit"], page["offset"]) == (50, 55, 50, 0)
    assert names(page)[0] == "n54"
    rest = listed(client, "?offset=50")
    assert names(rest) == ["n4", "n3", "n2", "n1", "n0"]


def test_limit_1000_is_accepted(client, mixed):
    page = listed(client, "?limit=1000")
    assert (page["limit"], page["total"], len(page["incidents"])) == (1000, 6, 6)


# --------------------------------------------------------------------------- bad queries


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=-5", "limit"),
        ("limit=abc", "limit"),
        ("limit=1.5", "limit"),
        ("offset=-1", "offset"),
        ("offset=abc", "offset"),
        ("offset=99999999999999999999999", "offset"),
        ("status=closed", "status"),
        ("status=OPEN", "status"),
        ("severity=urgent", "severity"),
        ("severity=", "severity"),
        ("service=a%00b", "service"),
        ("service=", "service"),
    ],
)
def test_bad_query_values_are_422_naming_the_field(client, query, field):
    response = client.get(f"{URL}?{query}")
    assert response.status_code == 422
    body = response.get_json()
    assert body["code"] == 422
    assert body["status"] == "Unprocessable Entity"
    assert field in body["errors"], body


def test_unknown_query_parameters_are_ignored(client, mixed):
    page = listed(client, "?sort=title&page=3&status=open&foo=%00")
    assert names(page) == ["d", "a"]


def test_largest_offset_is_an_empty_page_not_an_error(client, mixed):
    page = listed(client, f"?offset={2**63 - 1}")
    assert (page["incidents"], page["total"], page["offset"]) == ([], 6, 2**63 - 1)
    assert client.get(f"{URL}?offset={2**63}").status_code == 422


# --------------------------------------------------------------------------- the page PostgreSQL writes
