"""The live feed in a real headless Chromium: a page from another origin follows the service with
EventSource and WebSocket, as the platform's web UI does, and records what arrives."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from selenium.webdriver.support.wait import WebDriverWait

from tests.support.gunicorn import GunicornService, free_port
from tests.test_docs_browser import browser  # noqa: F401  (the headless Chromium fixture)

PAGE = """<!doctype html><html><body><script>
window.received = {sse: [], ws: []};
const base = "127.0.0.1:SERVICE_PORT";
const source = new EventSource("http://" + base + "/api/v1/stream?types=created,acknowledged");
for (const type of ["created", "acknowledged"]) {
  source.addEventListener(type, (e) => received.sse.push({type, id: e.lastEventId, data: JSON.parse(e.data)}));
}
source.onopen = () => { window.sseOpen = true; };
const socket = new WebSocket("ws://" + base + "/ws/incidents");
socket.onmessage = (e) => received.ws.push(JSON.parse(e.data));
socket.onopen = () => { window.wsOpen = true; };
</script></body></html>"""


@pytest.fixture(scope="module")
def page_and_service(migrated_urls, postgres_available, _session_peers, tmp_path_factory):
    oncall, notifier = _session_peers
    page_port = free_port()
    origin = f"http://127.0.0.1:{page_port}"
    service = GunicornService(
        {"DATABASE_URL": migrated_urls["postgresql"](), "ONCALL_SERVICE_URL": oncall.url,
         "NOTIFICATION_SERVICE_URL": notifier.url, "HTTP_CLIENT_TIMEOUT": "2", "CORS_ORIGINS": origin},
        workers=2, log_path=tmp_path_factory.mktemp("browser") / "service.log",
    ).start()
    html = PAGE.replace("SERVICE_PORT", str(service.port)).encode()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(html)))
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", page_port), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield origin, service
    server.shutdown()
    service.stop()


def test_a_browser_follows_with_event_source_and_websocket(page_and_service, browser):  # noqa: F811
    origin, service = page_and_service
    browser.get(f"{origin}/")
    WebDriverWait(browser, 15).until(lambda b: b.execute_script("return window.sseOpen && window.wsOpen"))
    created = requests.post(f"{service.url}/api/v1/incidents", timeout=10,
                            json={"title": "Browser sees it", "service": "web", "severity": "medium"})
    incident_id = created.json()["incident_id"]
    patched = requests.patch(f"{service.url}/api/v1/incidents/{incident_id}", json={"status": "acknowledged"},
                             timeout=10)
    assert patched.status_code == 200

    def arrived(b):
        received = b.execute_script("return window.received")
        sse = [e for e in received["sse"] if e["data"]["incident_id"] == incident_id]
        ws = [m for m in received["ws"] if m["data"]["incident_id"] == incident_id]
        acknowledged = any(m["data"]["type"] == "acknowledged" for m in ws)
        return (sse, ws) if len(sse) == 2 and acknowledged else False

    sse, ws = WebDriverWait(browser, 15).until(arrived)
    assert [e["type"] for e in sse] == ["created", "acknowledged"]
    assert all(e["id"] == e["data"]["cursor"] for e in sse)  # EventSource's lastEventId: what it resumes from
    assert sse[1]["data"]["incident"]["status"] == "acknowledged"
    assert ws[0]["event"] == "incident_created" and ws[0]["data"]["type"] == "created"
    assert ws[-1] == {"event": "incident_updated", "data": {
        "incident_id": incident_id, "status": "acknowledged", "severity": "medium", "service": "web",
        "cursor": ws[-1]["data"]["cursor"], "type": "acknowledged"}}
