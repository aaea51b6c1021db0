# The chat bots: no torch, no transformers, no engine/, no data/ and no models volume; they speak only to
# Redis (every admin action is a job for the workers), so this image runs on any host that reaches it.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY qabot qabot
COPY worker worker
COPY bots bots
RUN pip install ".[bots]"
