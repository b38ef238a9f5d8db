"""Fast stand-ins for the On-Call and Notification services, for load runs: one gevent process.

`python bench/peers.py --port 18003` answers both peers' paths on one port, so the service's
ONCALL_SERVICE_URL and NOTIFICATION_SERVICE_URL can both point at it. Keep-alive, no logging.

It shares the benchmark's two cores with the service, so what it costs a call is taken from the
creates it measures: gevent's WSGI server (pywsgi) spent 0.10 ms of CPU a call, a fifth of what a
create's two calls cost the service itself. So it speaks just the HTTP/1.1 the peers' clients send
(a request line, headers, a body by Content-Length; keep-alive unless told otherwise) over gevent's
StreamServer, and answers from replies made once per team: about a fifth of that. What it does not
speak (a chunked body, a bad Content-Length or request line) gets a 400 and the connection closed;
a head over 64 KiB, the connection closed.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
from urllib.parse import parse_qs, urlsplit  # noqa: E402

from gevent.server import StreamServer  # noqa: E402

MAX_HEAD = 64 * 1024
NOTIFIED = b'{"status": "sent"}'
NOT_FOUND = b'{"code": 404, "status": "Not Found", "message": "no such path"}'
BAD_REQUEST = b'{"code": 400, "status": "Bad Request", "message": "not understood"}'


def reply(status: str, body: bytes, *, close: bool = False) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + ("Connection: close\r\n" if close else "") + "\r\n").encode() + body


@functools.lru_cache(maxsize=4096)
def on_call(team: str, close: bool) -> bytes:
    return reply("200 OK", json.dumps({
        "team": team,
        "primary": {"name": f"{team} primary", "email": f"{team}-primary@example.com"},
        "secondary": {"name": f"{team} secondary", "email": f"{team}-secondary@example.com"},
    }).encode(), close=close)


@functools.lru_cache(maxsize=4096)
def answer(method: bytes, target: bytes, close: bool) -> bytes:
    url = urlsplit(target.decode("latin-1"))
    if url.path == "/api/v1/oncall/current":
        return on_call(parse_qs(url.query).get("team", ["unknown"])[0], close)
    if url.path == "/api/v1/notify" and method == b"POST":
        return reply("202 Accepted", NOTIFIED, close=close)
    return reply("404 Not Found", NOT_FOUND, close=close)


def serve(sock: socket.socket, _address: object) -> None:
    """One connection: its requests in turn, each answered once its body has arrived."""
    buffer = b""
    while True:
        while b"\r\n\r\n" not in buffer:
            if len(buffer) > MAX_HEAD or not (chunk := sock.recv(65536)):
                return
            buffer += chunk
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        request_line, *fields = head.split(b"\r\n")
        parts = request_line.split(b" ")
        length, close, understood = 0, len(parts) == 3 and parts[2] == b"HTTP/1.0", len(parts) == 3
        for field in fields:
            name, _, value = field.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length" and value.isdigit():
                length = int(value)
            elif name == b"connection":
                close = value == b"close"
            elif name in (b"transfer-encoding", b"content-length"):
                understood = False
        if not understood:
            sock.sendall(reply("400 Bad Request", BAD_REQUEST, close=True))
            return
        while len(buffer) < length:
            if not (chunk := sock.recv(65536)):
                return
            buffer += chunk
        buffer = buffer[length:]
        sock.sendall(answer(parts[0], parts[1], close))
        if close:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    listener = socket.create_server(("127.0.0.1", args.port), backlog=1024)
    # Accepted connections inherit it. Without it, a reply written in two parts leaves in two
    # segments and the second waits for the client's delayed ACK: 40 ms a call (as a real peer
    # behind gunicorn, which sets TCP_NODELAY, would not).
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    StreamServer(listener, serve).serve_forever()


if __name__ == "__main__":
    main()
