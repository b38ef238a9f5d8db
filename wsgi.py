"""WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`."""

from incident_app import create_app

app = create_app()
