"""Clients of the platform's other services. A peer that is down, slow or rude is a value here,
never an exception that reaches a request."""
