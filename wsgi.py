"""WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`, and `flask --app wsgi …` commands."""

from incident_app import create_app
from incident_app.settings import settings_or_exit

app = create_app(settings_or_exit())
