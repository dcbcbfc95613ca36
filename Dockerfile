# EventOps application image: every app service in docker-compose.yml (topic init, migrations,
# workers, API, MLflow server) runs from this one image.
#
#   docker build -t eventops:local .
#   docker run --rm eventops:local --help
#
# The entrypoint is the `eventops` CLI; the MLflow service overrides it with `mlflow`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package build needs (keeps .venv/.services/mlruns of a dev checkout out of the
# image). All runtime dependencies ship manylinux wheels (confluent-kafka bundles librdkafka,
# psycopg[binary] bundles libpq), so no compiler or system libraries are needed.
COPY pyproject.toml README.md ./
COPY core ./core
COPY features ./features
COPY models ./models
COPY storage ./storage
COPY registry ./registry
COPY pipeline ./pipeline
COPY notify ./notify
COPY training ./training
COPY serving ./serving
COPY cli ./cli
RUN pip install . \
    && rm -rf /root/.cache

# Non-root runtime user; /mlruns is the MLflow artifact store (a named volume in compose; a
# fresh named volume inherits this ownership).
RUN groupadd --system --gid 10001 eventops \
    && useradd --system --uid 10001 --gid eventops --home-dir /home/eventops --create-home \
       --shell /usr/sbin/nologin eventops \
    && mkdir -p /mlruns \
    && chown eventops:eventops /mlruns
USER eventops:eventops
WORKDIR /home/eventops

ENV EVENTOPS_MLFLOW_ARTIFACTS=/mlruns

EXPOSE 8000 5000
ENTRYPOINT ["eventops"]
CMD ["--help"]
