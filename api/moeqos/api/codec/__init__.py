"""The one wire codec: domain types (moeqos.core) to and from protobuf messages (moeqos.proto).

One module per proto package: `common` (moeqos.common.v1), `executor` (moeqos.executor.v1), `planner`
(moeqos.planner.v1). Both servers and both clients convert through it, and nothing else touches pb2
beyond building and reading the request and response envelopes. Every field is converted by name, one by
one; every `*_from_proto` that reads caller input validates it and raises InvalidArgument.
"""
