# Images for compose.yaml. `worker` (also the trainer and the registry command) and `mlflow`.

FROM python:3.11-slim AS worker
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
# CPU-only torch first (the default wheel on PyPI is the multi-GB CUDA build).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY worker ./worker
COPY tracking ./tracking
COPY bench ./bench
# mlflow-skinny: MLflow's client (tracking and the model registry) without the
# server's dependencies (pandas, scikit-learn, SQLAlchemy, Flask...).
# Everything a service writes is under /models (the folder source), /var/cache/statpair
# (registry downloads) or /var/lib/statpair (the trainer's runs): created here, owned
# by the non-root user, so the named volumes mounted there are writable. /app is not.
RUN pip install '.[worker,train,registry]' mlflow-skinny==3.17.2 && useradd --create-home --uid 10001 statpair \
    && mkdir -p /models /var/cache/statpair /var/lib/statpair \
    && chown statpair /models /var/cache/statpair /var/lib/statpair
USER statpair
ENV MODEL_DIR=/models MODEL_CACHE_DIR=/var/cache/statpair
EXPOSE 9100
CMD ["python", "-m", "worker"]

FROM python:3.11-slim AS mlflow
ENV PIP_NO_CACHE_DIR=1
# The same MLflow the project is tested against, with the PostgreSQL driver.
RUN pip install mlflow==3.17.2 psycopg2-binary==2.9.13
EXPOSE 5000
