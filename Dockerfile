# photolabel: CPU image running `photolabel serve` on port 8080.
#   docker build -t photolabel .
#   docker run -p 8080:8080 -v photolabel-data:/data -e API_TOKEN="$(openssl rand -hex 24)" photolabel
# The container listens on 0.0.0.0, so `photolabel serve` needs API_TOKEN (or API_TOKEN_FILE, e.g. a
# Docker secret under /run/secrets/) and refuses to start without one, unless NO_AUTH=true says that
# it is meant to be open.
#   docker run -i -v "$PWD:/work" -w /work photolabel photolabel worker -d dataset -c dog cat
# The set-up step is the README's own (scripts/setup.sh), so the tested path and the
# container path cannot drift apart.
FROM python:3.11-slim

WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PHOTOLABEL_EXTRAS=""

# Optional: an extra package index (e.g. PyTorch's CPU wheels) for `pip install torch==2.13.0`.
ARG PIP_EXTRA_INDEX_URL=""
COPY pyproject.toml README.md ./
COPY scripts ./scripts
COPY src ./src
COPY examples ./examples
RUN scripts/setup.sh

ENV PATH=/app/.venv/bin:$PATH \
    PHOTOLABEL_CACHE_DIR=/var/cache/photolabel \
    DATA_DIR=/data \
    API_HOST=0.0.0.0 \
    API_PORT=8080
# Export the backbone to ONNX now, so the container needs nothing at start.
RUN photolabel prepare

VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/livez', timeout=4)" || exit 1
CMD ["photolabel", "serve"]
