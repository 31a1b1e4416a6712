# syntax=docker/dockerfile:1
# One image for both services and the `arbiter` command; the Deployment's args pick what runs
# (python -m services.registry, python -m services.orchestrator, arbiter migrate).

# Build: install the package and its pinned dependencies into a virtual environment. The generated gRPC
# code is committed (make proto), so nothing is generated here.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/arbiter
WORKDIR /src
COPY pyproject.toml README.md ./
COPY arbiter ./arbiter
COPY services ./services
COPY shared ./shared
RUN /opt/arbiter/bin/pip install .

# Run: the virtual environment alone, as an unprivileged user, on a read-only-friendly layout.
FROM python:3.11-slim
RUN groupadd --gid 10001 arbiter \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin arbiter
COPY --from=build /opt/arbiter /opt/arbiter
ENV PATH=/opt/arbiter/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ARBITER_REGISTRY_ADDR=0.0.0.0:50051 \
    ARBITER_ORCHESTRATOR_ADDR=0.0.0.0:50052 \
    ARBITER_HEALTH_ADDR=0.0.0.0:8081 \
    ARBITER_METRICS_ADDR=0.0.0.0:9464 \
    ARBITER_LOG_FORMAT=json
WORKDIR /opt/arbiter
USER 10001:10001
EXPOSE 50051 50052 8081 9464
# grpc.health.v1 on the plaintext health port, as Kubernetes' native probes ask it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-m", "shared.healthcheck", "127.0.0.1:8081"]
CMD ["python", "-m", "services.orchestrator"]
