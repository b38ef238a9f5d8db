# A slim image that runs the service under gunicorn as an unprivileged user.
FROM python:3.11-slim AS build
WORKDIR /build
COPY requirements.txt .
# Runtime dependencies only: everything above the "# Tests" section of requirements.txt.
RUN sed '/^# Tests/,$d' requirements.txt > runtime.txt \
 && pip wheel --no-cache-dir --wheel-dir /wheels -r runtime.txt

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SERVICE_PORT=8002
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin incident
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/* && rm -rf /wheels
COPY --chown=incident:incident incident_app ./incident_app
COPY --chown=incident:incident migrations ./migrations
COPY --chown=incident:incident wsgi.py gunicorn.conf.py ./
USER incident
EXPOSE 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
  CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"SERVICE_PORT\"]}/health/live', timeout=2)"
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
