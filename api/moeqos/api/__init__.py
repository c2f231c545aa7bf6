"""The wire floor: the one codec between protobuf messages and the domain types, the two-way error
table, connection options and the server plumbing both servers share.

The codec is the only place messages meet domain types; the clients and servicers also import the
generated stubs, to make calls and register services. It imports nothing above `moeqos.core`.
"""
