"""The README's API examples work as pasted: every shell block of its API section, in order, against
the service under gunicorn (the id taken from the create, as the README does), answers JSON that is
no error."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from tests.support.gunicorn import ROOT, GunicornService

README_HOST = "localhost:8002"


def api_section_shell_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## API\n"):text.index("\n### Behaviour where the contract leaves a choice")]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def json_documents(text: str) -> list[object]:
    """The JSON documents curl printed one after another, with or without newlines between them."""
    decoder, documents, at = json.JSONDecoder(), [], 0
    while (at := len(text) - len(text[at:].lstrip())) < len(text):
        document, at = decoder.raw_decode(text, at)
        documents.append(document)
    return documents


@pytest.fixture
def service(_session_peers, tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    oncall, notifier = _session_peers
    oncall.respond(200, {"primary": {"name": "Alice", "email": "alice@example.com"}})
    notifier.respond(200, {"status": "sent"})
    service = GunicornService(
        {"DATABASE_URL": f"sqlite:///{tmp_path}/readme.db", "ONCALL_SERVICE_URL": oncall.url,
         "NOTIFICATION_SERVICE_URL": notifier.url, "HTTP_CLIENT_TIMEOUT": "2"},
        workers=1, log_path=tmp_path / "service.log",
    ).start()
    yield service
    service.stop()


def test_every_api_example_of_the_readme_works_as_pasted(service):
    # A followed stream (`curl -N`) never ends by itself: those blocks are run apart, for a while.
    blocks = [block for block in api_section_shell_blocks() if "curl -N" not in block]
    assert len(blocks) >= 6
    # One shell, so that the id the first block keeps serves the later ones.
    markers = [f"echo '<<block {n}>>'\n{block}\necho\n" for n, block in enumerate(blocks)]
    script = "set -eu\n" + "".join(markers).replace(README_HOST, f"127.0.0.1:{service.port}")
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    outputs = re.split(r"<<block \d+>>\n", done.stdout)[1:]
    assert len(outputs) == len(blocks)
    created_id = outputs[0].strip()
    assert re.fullmatch(r"inc-[0-9a-f]{16}", created_id), outputs[0]
    for block, output in zip(blocks[1:], outputs[1:], strict=True):
        if "/metrics" in block:
            assert "open_incidents{" in output
            output = output[:output.index("# HELP")]
        documents = json_documents(output)
        assert documents, block
        if '"dedup_key"' in block:  # Alert grouping: the first create opens, the next ones are grouped
            assert documents[:3] == [{"status": 201, "grouped": ""}, *[{"status": 200, "grouped": "true"}] * 2]
            assert documents[3]["total"] == 1 and documents[3]["incidents"][0]["grouped_count"] == 2
        errors = [d for d in documents if isinstance(d, dict) and isinstance(d.get("code"), int) and d["code"] >= 400]
        # A wrong id would be a 404 here: the blocks that use $id reached the incident the first made.
        assert errors == [], block


def test_the_readme_stream_examples_answer_as_an_event_stream(service):
    streams = [line.split("#")[0].strip() for block in api_section_shell_blocks() for line in block.splitlines()
               if line.startswith("curl -N")]
    assert streams
    for command in streams:
        command = command.replace(README_HOST, f"127.0.0.1:{service.port}").replace("curl -N", "curl -sN --max-time 2")
        done = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert done.returncode == 28, (command, done.stderr)  # still streaming when curl stopped following
        assert done.stdout.startswith("retry: 3000"), (command, done.stdout)
