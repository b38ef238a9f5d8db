# A slim image that runs the service under gunicorn as an unprivileged user.
FROM python:3.11-slim AS build
WORKDIR /build
# The runtime requirements only; the test tools are in requirements-dev.txt.
COPY requirements.txt .
RUN pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.txt

FROM python:3.11-slim
# The code in /app stays root's and read-only to the service. The service's working directory is
# its data directory, a volume: the default DATABASE_URL (sqlite:///incident-management.db, relative
# to the working directory) is /var/lib/incident-management/incident-management.db, writable by
# `incident`. Set DATABASE_URL to PostgreSQL in production and the volume holds nothing.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    SERVICE_PORT=8002
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin incident \
 && install -d -o incident -g incident -m 0750 /var/lib/incident-management
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/* && rm -rf /wheels
WORKDIR /app
COPY incident_app ./incident_app
COPY migrations ./migrations
COPY wsgi.py gunicorn.conf.py ./
WORKDIR /var/lib/incident-management
VOLUME /var/lib/incident-management
USER incident
EXPOSE 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
  CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"SERVICE_PORT\"]}/health/live', timeout=2)"
CMD ["gunicorn", "-c", "/app/gunicorn.conf.py", "wsgi:app"]
