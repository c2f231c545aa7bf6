"""The wire floor: the one codec between protobuf messages and the domain types, the two-way error
table, connection options and the server plumbing both servers share.

Only this package imports `moeqos.proto`; it imports nothing above `moeqos.core`.
"""
