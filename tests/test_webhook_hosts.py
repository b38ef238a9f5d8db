"""Webhook receivers' host names: an IP address is not looked up, a name is looked up on the sender's
own threads and kept for a while, a name that does not exist or whose lookup hangs is a failed
attempt (in time) retried later, and TLS checks the certificate against the name, not the address.

The sender's resolver is given its lookup: the system's, except names a test makes fail or hang."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from incident_app.peers.resolver import CACHE_FOR, FAILED_FOR, HostResolver, LookupFailed, system_lookup
from incident_app.webhooks import receiver_client
from tests.support.peers import FakePeer
from tests.support.reliability import wait_until
from tests.test_webhooks import HOOKS, RECEIVE, attempts, deliveries, later, receiver, sender  # noqa: F401


class Lookups:
    """The lookup the sender's resolver runs: per name, "fail", "hang" or an address; else the system's."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.asked: list[str] = []
        self.released = threading.Event()

    def __call__(self, host: str, port: int) -> list:
        self.asked.append(host)
        answer = self.names.get(host)
        if answer == "hang":
            self.released.wait(30)
            answer = "fail"
        if answer == "fail":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return system_lookup(answer or host, port)


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lookups() -> Iterator[Lookups]:
    found = Lookups()
    yield found
    found.released.set()  # the lookups left hanging end with the test


@pytest.fixture
def monotonic() -> Monotonic:
    return Monotonic()


def resolving_with(app, lookups: Lookups, clock=time.monotonic, ca_certs: str | None = None):
    """The app's sender, its client's resolver running `lookups` (and trusting `ca_certs`)."""
    work = sender(app)
    work.client = receiver_client(
        timeout=work.timeout, in_flight=work.in_flight, ca_certs=ca_certs,
        resolver=HostResolver(timeout=work.timeout, lookup=lookups, clock=clock),
    )
    return work


def subscribe(client, url: str, **fields) -> dict:
    response = client.post(HOOKS, json={"url": url, **fields})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def port_of(peer: FakePeer) -> int:
    return peer.server.server_address[1]


def test_an_ip_address_is_not_looked_up(app, client, receiver, lookups, database_url, create_incident):
    subscribe(client, receiver.url + RECEIVE, types=["created"])
    create_incident()
    assert resolving_with(app, lookups).deliver_due(now=later(app, 1)) == 1
    assert [r.state for r in deliveries(database_url)] == ["sent"]
    assert lookups.asked == []


def test_a_receivers_connection_is_kept_for_the_next_delivery(app, client, receiver, lookups, database_url,
                                                              create_incident):
    subscribe(client, f"http://localhost:{port_of(receiver)}{RECEIVE}", types=["created"])
    work = resolving_with(app, lookups)
    for n in range(3):
        create_incident()
        assert work.deliver_due(now=later(app, 1 + n)) == 1
    assert [r.state for r in deliveries(database_url)] == ["sent"] * 3
    assert len({r.client_port for r in receiver.requests_to(RECEIVE)}) == 1, "one connection"
    assert lookups.asked == ["localhost"]


def test_a_name_is_looked_up_once_for_the_deliveries_in_flight_and_sent_as_the_host(
    app, client, receiver, lookups, database_url, create_incident
):
    subscribe(client, f"http://localhost:{port_of(receiver)}{RECEIVE}", types=["created"])
    for _ in range(3):
        create_incident()
    assert resolving_with(app, lookups).deliver_due(now=later(app, 1)) == 3
    assert lookups.asked == ["localhost"]
    assert {r.headers["Host"] for r in receiver.requests_to(RECEIVE)} == {f"localhost:{port_of(receiver)}"}
    assert [r.state for r in deliveries(database_url)] == ["sent"] * 3


def test_an_answer_is_kept_for_a_while_then_looked_up_again(lookups, monotonic):
    resolver = HostResolver(timeout=1, lookup=lookups, clock=monotonic)
    first = resolver.resolve("localhost", 80)
    assert ("127.0.0.1", 80) in [address[4] for address in first]
    monotonic.now += CACHE_FOR - 1
    assert resolver.resolve("localhost", 80) == first
    assert lookups.asked == ["localhost"]
    monotonic.now += 1
    resolver.resolve("localhost", 80)
    assert wait_until(lambda: lookups.asked == ["localhost"] * 2, timeout=5)


def test_a_name_keeps_its_last_address_while_its_next_lookup_hangs(lookups, monotonic):
    resolver = HostResolver(timeout=1, lookup=lookups, clock=monotonic)
    first = resolver.resolve("localhost", 80)
    lookups.names["localhost"] = "hang"
    monotonic.now += CACHE_FOR
    began = time.monotonic()
    assert resolver.resolve("localhost", 80) == first
    assert time.monotonic() - began < 0.5, "no wait for the lookup under way"
    assert wait_until(lambda: lookups.asked == ["localhost"] * 2, timeout=5)
    lookups.released.set()  # it fails: the name's address is no longer known
    assert wait_until(lambda: _fails(resolver, "localhost"), timeout=5)


def _fails(resolver: HostResolver, host: str) -> bool:
    try:
        resolver.resolve(host, 80)
        return False
    except LookupFailed:
        return True


def test_a_name_that_does_not_exist_is_a_failed_attempt_retried(app, client, receiver, lookups, monotonic,
                                                                database_url, create_incident):
    lookups.names["nowhere.invalid"] = "fail"
    subscribe(client, f"http://nowhere.invalid:{port_of(receiver)}{RECEIVE}", types=["created"])
    work = resolving_with(app, lookups, clock=monotonic)
    create_incident()
    assert work.deliver_due(now=later(app, 1)) == 1
    assert [(r.state, r.attempts, r.last_status) for r in deliveries(database_url)] == [("pending", 1, "failed")]
    assert attempts(app, "failed") == 1

    lookups.names["nowhere.invalid"] = "127.0.0.1"  # the name exists now
    assert work.deliver_due(now=later(app, 20)) == 1
    assert lookups.asked == ["nowhere.invalid"], "a failure stands for a few seconds"
    assert [(r.state, r.attempts) for r in deliveries(database_url)] == [("pending", 2)]

    monotonic.now += FAILED_FOR
    assert work.deliver_due(now=later(app, 60)) == 1
    assert [(r.state, r.attempts) for r in deliveries(database_url)] == [("sent", 3)]
    (delivered,) = receiver.requests_to(RECEIVE)
    assert delivered.headers["Host"] == f"nowhere.invalid:{port_of(receiver)}"


def test_a_lookup_that_hangs_fails_its_attempts_in_time_and_holds_no_other_receiver(
    make_app, receiver, lookups, create_incident
):
    app = make_app(http_client_timeout=0.5)
    client = app.test_client()
    lookups.names["stuck.example"] = "hang"
    stuck = subscribe(client, "http://stuck.example/hook")
    subscribe(client, receiver.url + RECEIVE)
    subscribe(client, f"http://localhost:{port_of(receiver)}/by-name")
    work = resolving_with(app, lookups)
    for _ in range(2):
        create_incident(via=client)  # 6 events for each subscription

    for round_, seconds in enumerate((1, 20)):
        began = time.monotonic()
        assert work.deliver_due(now=later(app, seconds)) == 18 - 12 * round_
        assert time.monotonic() - began < 3, "each attempt ends within about HTTP_CLIENT_TIMEOUT"
    assert len(receiver.requests_to(RECEIVE)) == 6 and len(receiver.requests_to("/by-name")) == 6
    assert lookups.asked.count("stuck.example") == 1, "one lookup under way, which every attempt waits for"
    shown = client.get(f"{HOOKS}/{stuck['id']}").get_json()
    assert (shown["pending"], shown["last_status"]) == (6, "failed")


# --------------------------------------------------------------------------- TLS


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, str]:
    """A CA, and certificates it signed for `localhost` and for `elsewhere.example`."""
    where = tmp_path_factory.mktemp("tls")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *key, "-keyout", f"{where}/ca.key", "-out", f"{where}/ca.pem", "-days", "2",
             "-subj", "/CN=webhook test CA")
    files = {"ca": f"{where}/ca.pem"}
    for name in ("localhost", "elsewhere.example"):
        _openssl("req", *key, "-keyout", f"{where}/{name}.key", "-out", f"{where}/{name}.csr", "-subj", f"/CN={name}")
        (where / f"{name}.ext").write_text(f"subjectAltName=DNS:{name}\n")
        _openssl("x509", "-req", "-in", f"{where}/{name}.csr", "-CA", files["ca"], "-CAkey", f"{where}/ca.key",
                 "-CAcreateserial", "-days", "2", "-out", f"{where}/{name}.pem", "-extfile", f"{where}/{name}.ext")
        files[name] = f"{where}/{name}"
    return files


@pytest.mark.parametrize(("certified_name", "delivered"), [("localhost", True), ("elsewhere.example", False)])
def test_https_checks_the_certificate_against_the_name_connected_by_address(
    app, client, lookups, certificates, database_url, create_incident, certified_name, delivered
):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates[certified_name] + ".pem", certificates[certified_name] + ".key")
    asked_for: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: asked_for.append(name)
    peer = FakePeer(tls=context)
    peer.respond(204, raw=b"")
    try:
        subscribe(client, f"https://localhost:{port_of(peer)}{RECEIVE}", types=["created"])
        create_incident()
        resolving_with(app, lookups, ca_certs=certificates["ca"]).deliver_due(now=later(app, 1))
        assert asked_for == ["localhost"], "SNI names the host, not its address"
        assert lookups.asked == ["localhost"]
        assert [r.state for r in deliveries(database_url)] == (["sent"] if delivered else ["pending"])
        assert len(peer.requests_to(RECEIVE)) == int(delivered)
    finally:
        peer.close()
