# Images for compose.yaml. `worker` (also the trainer and the registry command) and `mlflow`.

FROM python:3.11-slim AS worker
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
# Every version comes from requirements.lock, the lock `make` installs: its pins (hashes
# aside) are the constraints of each install below (setuptools' build environment
# included), so an image holds the versions the suite passed with, and only what its role
# needs. torch's CPU build (torch==2.13.0+cpu in
# the lock) comes from PyTorch's CPU index; the default wheel on PyPI is the multi-GB
# CUDA build.
ENV PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY requirements.lock ./
RUN sed -e '/--hash=/d' -e 's/ \\$//' requirements.lock > /tmp/constraints.txt
ENV PIP_CONSTRAINT=/tmp/constraints.txt
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
RUN pip install '.[worker,train,registry]' && useradd --create-home --uid 10001 statpair \
    && mkdir -p /models /var/cache/statpair /var/lib/statpair \
    && chown statpair /models /var/cache/statpair /var/lib/statpair
USER statpair
ENV MODEL_DIR=/models MODEL_CACHE_DIR=/var/cache/statpair
EXPOSE 9100
CMD ["python", "-m", "worker"]

FROM python:3.11-slim AS mlflow
ENV PIP_NO_CACHE_DIR=1
# The MLflow server the project is tested against (its version in requirements.lock), with
# the PostgreSQL driver.
COPY requirements.lock /tmp/
RUN sed -e '/--hash=/d' -e 's/ \\$//' /tmp/requirements.lock > /tmp/constraints.txt \
    && pip install --constraint /tmp/constraints.txt mlflow psycopg2-binary
EXPOSE 5000
