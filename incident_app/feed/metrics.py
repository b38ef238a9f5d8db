"""The feed's metrics: followers connected now, and events sent, per transport."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

TRANSPORTS = ("sse", "websocket")


class StreamMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # livesum: the followers of every live worker, summed; a dead worker's leave with it.
        self.followers = Gauge(
            "stream_followers", "Clients following the live feed now, by transport.", ["transport"],
            multiprocess_mode="livesum", registry=registry,
        )
        self.events_sent = Counter(
            "stream_events_sent", "Feed events written to followers, by transport.", ["transport"], registry=registry,
        )
        for transport in TRANSPORTS:  # every series from the first scrape
            self.followers.labels(transport=transport)
            self.events_sent.labels(transport=transport)

    def joined(self, transport: str) -> None:
        self.followers.labels(transport=transport).inc()

    def left(self, transport: str) -> None:
        self.followers.labels(transport=transport).dec()

    def sent(self, transport: str, count: int) -> None:
        self.events_sent.labels(transport=transport).inc(count)
