"""The service's WSGI app (`wsgi:app`) with one change: its webhook sender's lookups of names under
`.hang.test` block their thread for HANG_SECONDS, as lookups do where DNS does not answer. Every
other name is looked up by the system. For tests/test_webhook_faults.py, under real gunicorn:

    gunicorn -c gunicorn.conf.py tests.support.hanging_dns:app
"""

from gevent import monkey

from incident_app.peers.resolver import HostResolver, system_lookup
from incident_app.webhooks import receiver_client
from wsgi import app

HANGING = ".hang.test"
HANG_SECONDS = 120.0
_blocking_sleep = monkey.get_original("time", "sleep")  # blocks the OS thread, as getaddrinfo does


def lookup(host: str, port: int) -> list:
    if host.endswith(HANGING):
        _blocking_sleep(HANG_SECONDS)
    return system_lookup(host, port)


sender = app.extensions["background"].webhooks
sender.client = receiver_client(
    timeout=sender.timeout, in_flight=sender.in_flight, resolver=HostResolver(timeout=sender.timeout, lookup=lookup))
