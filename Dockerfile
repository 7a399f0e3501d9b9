# One blossom-dash replica. compose.yaml runs two of them behind nginx on shared Redis and
# PostgreSQL (README, "Deploy with Docker").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Runtime dependencies only (requirements-dev.txt is for the tests). Its own layer, so a
# code change does not reinstall them. Every pin has a manylinux wheel: no compiler needed.
COPY requirements.txt ./
RUN pip install -r requirements.txt

# A fixed uid, so a bind-mounted data folder can be given to it (chown 10001).
RUN useradd --create-home --uid 10001 --user-group blossom

# The code stays root-owned and read-only to the app; only its data folder is writable
# (the event journal, and the SQLite store when no database URL is set).
COPY app.py ./
COPY app_pages ./app_pages
COPY blossom_dash ./blossom_dash
COPY .streamlit/config.toml ./.streamlit/config.toml
RUN mkdir -p /app/data && chown blossom:blossom /app/data
ENV BLOSSOM_DASH_DATA_DIR=/app/data

USER blossom

EXPOSE 8501

# Readiness: Streamlit's /_stcore/health, the database (SELECT 1) and Redis (PING) when
# set; exit 1 names what is not ready (python -m blossom_dash.health --help).
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD ["python", "-m", "blossom_dash.health", "--streamlit", "http://127.0.0.1:8501", "--timeout", "3"]

# The entrypoint writes the [auth] secrets from BLOSSOM_DASH_COOKIE_SECRET and
# BLOSSOM_DASH_AUTH_* (blossom_dash/ui/entrypoint.py), then runs the launcher, which
# refuses 0.0.0.0 unless sign-in (or kiosk mode) is configured: a container without its
# sign-in settings exits with status 2 and says why instead of serving everyone as admin.
ENTRYPOINT ["python", "-m", "blossom_dash.ui.entrypoint"]
CMD ["--server.address", "0.0.0.0", "--server.port", "8501", "--server.headless", "true"]
