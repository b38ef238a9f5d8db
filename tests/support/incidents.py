"""What many tests send: the incidents URL and a body every create accepts."""

URL = "/api/v1/incidents"
# A test changes only the fields it is about: {**VALID, "severity": "low"}.
VALID = {"title": "Disk full", "service": "storage", "severity": "high"}
