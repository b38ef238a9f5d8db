"""Every query the service runs: incidents.py for the incident rows, analytics.py for aggregates."""
