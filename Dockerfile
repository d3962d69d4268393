# One image for every Python entry point of VisionMesh: the mesh services (`python -m services.<name>`), the
# gateway (`python -m gateway serve`) and the Envoy config renderer (`python -m gateway render`). Each
# docker-compose.yml service chooses its process with `command`; Envoy itself runs from the official image.
FROM python:3.11-slim-bookworm

# Unbuffered output: log lines reach `docker compose logs` as they are written.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1

# opencv-python (an Ultralytics dependency) links libGL and GLib even when no window is ever opened.
RUN apt-get update \
    && apt-get install --no-install-recommends -y libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# The same uv version as ./mesh setup, so the image installs the lock file exactly as a developer machine does.
RUN pip install "uv==0.13.9"

# Dependencies from the lock file alone, before the source: this large layer is rebuilt only when
# lock.txt changes, not on every code edit. Bytecode is compiled now (UV_COMPILE_BYTECODE) because the
# non-root runtime user cannot write __pycache__ into site-packages, so every start would recompile.
COPY requirements/lock.txt requirements/lock.txt
# `sync`, not `install`: the lock is complete and must not be re-resolved (requirements/excludes.txt keeps a
# dependency out on purpose).
RUN uv pip sync --system requirements/lock.txt

COPY . .

# Generated protobuf code and Envoy's descriptor set, exactly as ./mesh setup makes them (build/ is not in
# the build context, see .dockerignore, so it is always generated from the protos in this image).
RUN python protos/generate.py

# Run as an unprivileged user. /data and /envoy are created owned by it so that the named volumes mounted
# there (initialised from the image on first use) are writable by the services and by envoy-config.
RUN useradd --create-home --uid 10001 visionmesh \
    && mkdir -p /data /envoy \
    && chown visionmesh:visionmesh /data /envoy
USER visionmesh

# The repository root and the generated code are importable without an install step (./mesh does the same
# with a .pth file). The VM_* defaults are the container ones: data on the /data volume, servers reachable
# from other containers, JSON log lines.
ENV PYTHONPATH=/app:/app/build/gen/python \
    VM_DATA_ROOT=/data \
    VM_BIND_HOST=0.0.0.0 \
    VM_LOG_FORMAT=json

# No default process: every compose service sets `command`. Not `python -m launcher`, which ignores its
# arguments and would start the whole platform inside one container.
CMD ["python", "-m", "gateway", "--help"]
