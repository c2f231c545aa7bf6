# The gateway image: the light client and the gateway extra (Starlette, uvicorn, sse-starlette); no torch,
# no numpy, no model.
#   docker build -f docker/gateway.Dockerfile -t moeqos-gateway .
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
COPY apps/ apps/
COPY --from=stubs /src/api/moeqos/proto/ api/moeqos/proto/
RUN pip install --no-cache-dir ".[gateway]" && useradd --system moeqos
USER moeqos
ENV PYTHONUNBUFFERED=1 MOEQOS_LISTEN=0.0.0.0:8000
EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s CMD ["moeqos", "health", "http://127.0.0.1:8000/health"]
CMD ["moeqos", "gateway"]
