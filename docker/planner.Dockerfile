# The planner image: the base dependencies only (grpcio, protobuf, numpy, scipy); no torch, no model.
#   docker build -f docker/planner.Dockerfile -t moeqos-planner .
FROM python:3.11-slim AS stubs
WORKDIR /src
RUN pip install --no-cache-dir "grpcio-tools>=1.60"
COPY protos/ protos/
COPY scripts/gen_protos.sh scripts/
RUN PYTHON=python scripts/gen_protos.sh

FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY moeqos/ moeqos/
COPY planner/ planner/
COPY client/ client/
COPY --from=stubs /src/moeqos_proto/ moeqos_proto/
RUN pip install --no-cache-dir . && useradd --system --home-dir /data/moeqos moeqos
USER moeqos
ENV PYTHONUNBUFFERED=1 MOEQOS_LISTEN=0.0.0.0:50051
EXPOSE 50051
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s CMD ["moeqos", "health", "127.0.0.1:50051"]
CMD ["moeqos", "planner"]
