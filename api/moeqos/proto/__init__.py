"""The gRPC stubs generated from protos/ by scripts/gen_protos.sh (everything here but this file).

`moeqos.proto.<service>.v1.<service>_pb2` holds a service's messages; only `moeqos.api` imports them.
"""
