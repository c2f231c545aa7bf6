# The planner image: the planner extra only (grpcio, protobuf, numpy, scipy); no torch, no model.
#   docker build -f docker/planner.Dockerfile -t moeqos-planner .
FROM python:3.11-slim AS stubs
WORKDIR /src
RUN pip install --no-cache-dir "grpcio-tools>=1.60"
COPY protos/ protos/
COPY api/moeqos/proto/__init__.py api/moeqos/proto/
COPY scripts/gen_protos.sh scripts/
RUN PYTHON=python scripts/gen_protos.sh

FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core/ core/
COPY api/ api/
COPY client/ client/
COPY planner/ planner/
COPY apps/ apps/
COPY --from=stubs /src/api/moeqos/proto/ api/moeqos/proto/
RUN pip install --no-cache-dir ".[planner]" && useradd --system --home-dir /data/moeqos moeqos
USER moeqos
ENV PYTHONUNBUFFERED=1 MOEQOS_LISTEN=0.0.0.0:50051
EXPOSE 50051
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s CMD ["moeqos", "health", "127.0.0.1:50051"]
CMD ["moeqos", "planner"]
