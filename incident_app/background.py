"""Background work inside the service: outbox retries, escalation checks, expiry of idempotency keys,
folding the count shards; and, in a loop of its own, webhook deliveries.

One loop per process (a greenlet in a gevent worker, a thread elsewhere). Running it in every
worker of every replica is safe because each piece of work is claimed through the database.
Turn it off with BACKGROUND_WORK=false and run `flask --app wsgi background run` once instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from incident_app.escalation import Escalator
from incident_app.idempotency import IdempotencyKeys
from incident_app.loop_thread import LoopThread
from incident_app.outbox import NotificationOutbox
from incident_app.repository import counts
from incident_app.webhooks import WebhookSender

log = logging.getLogger(__name__)

OUTBOX_EVERY = 1.0
PURGE_EVERY = 300.0
FOLD_COUNTS_EVERY = 60.0


@dataclass
class _Job:
    name: str
    every: float
    run: Callable[[], object]
    next_at: float = 0.0


@dataclass
class BackgroundWork:
    outbox: NotificationOutbox
    escalator: Escalator
    idempotency: IdempotencyKeys
    escalation_every: float
    engine: Engine
    webhooks: WebhookSender | None = None  # webhook deliveries: a loop of their own
    _loop: LoopThread = field(init=False)

    def __post_init__(self) -> None:
        self._loop = LoopThread("background-work", self.run)

    def jobs(self) -> list[_Job]:
        return [
            _Job("deliver notifications", OUTBOX_EVERY, self.outbox.deliver_due),
            _Job("escalate incidents", self.escalation_every, self.escalator.escalate_due),
            _Job("expire idempotency keys", PURGE_EVERY, self.idempotency.purge_expired),
            _Job("fold incident count shards", FOLD_COUNTS_EVERY, lambda: counts.fold_shards(self.engine)),
            *([_Job("purge finished webhook deliveries", PURGE_EVERY, self.webhooks.purge_finished)]
              if self.webhooks is not None else []),
        ]

    def run(self) -> None:
        """Until stop(): each job when its period has passed. A failing job (database down) is
        logged and tried again next period; it never ends the loop."""
        if self.webhooks is not None:
            self.webhooks.start()
        try:
            self._run_jobs()
        finally:
            if self.webhooks is not None:
                self.webhooks.stop()

    def _run_jobs(self) -> None:
        jobs, stopping = self.jobs(), self._loop.stopping
        while not stopping.is_set():
            now = time.monotonic()
            for job in jobs:
                if now < job.next_at or stopping.is_set():
                    continue
                job.next_at = now + job.every
                try:
                    job.run()
                except Exception as exc:  # the next period retries; the database may be back by then
                    log.warning("background job failed: %s: %s", job.name, exc.__class__.__name__)
            stopping.wait(max(0.05, min(job.next_at for job in jobs) - time.monotonic()))

    def start(self) -> BackgroundWork:
        self._loop.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._loop.stop(timeout)
