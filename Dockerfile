# Image for every atml service in docker-compose.yml (search, worker, dashboard).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Build: CPU (torch 2.13.0+cpu). GPU workers: deploy/Dockerfile.cuda (the CUDA build).
# CPU-only torch first, from the PyTorch CPU index: the default index may pull a
# multi-GB CUDA build. Its own layer, so code changes do not download it again.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# The package with its dependencies (torch is already satisfied), plus grpcio for
# grpc:// storage URLs (Optuna's gRPC storage proxy).
COPY pyproject.toml README.md ./
COPY atml ./atml
RUN pip install . grpcio

COPY search_spaces ./search_spaces

# Not root; /artifacts is owned by the user so a fresh named volume is writable.
RUN useradd --create-home --uid 1000 atml && mkdir -p /artifacts && chown atml:atml /artifacts
USER atml
ENV ATML_ARTIFACTS=/artifacts
VOLUME ["/artifacts"]

CMD ["atml", "--help"]
