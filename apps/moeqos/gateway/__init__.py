"""`moeqos gateway`: an OpenAI-compatible HTTP service in front of moeqos executors.

Routes: `POST /v1/completions`, `POST /v1/chat/completions` (both with `stream: true` as server-sent
events ending with `data: [DONE]`), `GET /v1/models`, `GET /health`, `GET /metrics`. Model names are
QoS classes (`smollm2-moe8:fast`), each mapped by configuration to the executors that hold that
standing target; a request goes to the class's least-loaded executor.

Libraries, chosen for being small, well kept and standard in Python serving:
- Starlette (the ASGI toolkit FastAPI is built on): routing, requests and responses, without
  FastAPI's pydantic layer, which the hand-checked OpenAI request shape here does not need.
- uvicorn: the reference ASGI server (graceful shutdown on SIGTERM, HTTP/1.1 keep-alive).
- sse-starlette: server-sent events done right: keep-alive pings while a long prompt is read, and the
  generation cancelled (and so the executor's slot freed) when the client disconnects.
- prometheus-client for `/metrics`; the executors are reached through moeqos.client's asyncio client.
"""
