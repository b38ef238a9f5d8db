"""Fast stand-ins for the On-Call and Notification services, for load runs: one gevent process.

`python bench/peers.py --port 18003` answers both peers' paths on one port, so the service's
ONCALL_SERVICE_URL and NOTIFICATION_SERVICE_URL can both point at it. Keep-alive, no logging.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
from urllib.parse import parse_qs  # noqa: E402

from gevent.pywsgi import WSGIServer  # noqa: E402

NOTIFIED = b'{"status": "sent"}'
NOT_FOUND = b'{"code": 404, "status": "Not Found", "message": "no such path"}'


def peers_app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/api/v1/oncall/current":
        team = parse_qs(environ.get("QUERY_STRING", "")).get("team", ["unknown"])[0]
        body = json.dumps(
            {
                "team": team,
                "primary": {"name": f"{team} primary", "email": f"{team}-primary@example.com"},
                "secondary": {"name": f"{team} secondary", "email": f"{team}-secondary@example.com"},
            }
        ).encode()
        status = "200 OK"
    elif path == "/api/v1/notify" and environ.get("REQUEST_METHOD") == "POST":
        environ["wsgi.input"].read()
        body, status = NOTIFIED, "202 Accepted"
    else:
        body, status = NOT_FOUND, "404 Not Found"
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    listener = socket.create_server(("127.0.0.1", args.port), backlog=1024)
    # Accepted connections inherit it. Without it, pywsgi's reply goes out in two segments and the
    # second waits for the client's delayed ACK: 40 ms a call (as a real peer behind gunicorn,
    # which sets TCP_NODELAY, would not).
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    WSGIServer(listener, peers_app, log=None).serve_forever()


if __name__ == "__main__":
    main()
