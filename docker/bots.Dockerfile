# The chat bots: no torch, no transformers, only the queue client and the platform libraries.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY qabot qabot
COPY engine engine
COPY worker worker
COPY bots bots
COPY data data
RUN pip install -e ".[bots]"
