"""The ground floor: domain types every other floor shares, torch-free and wire-free.

`Plan`, `Precision`, tiers and placement rules, `Profile`, `QosTarget`, the error hierarchy, the
services' request and result types, model and hardware descriptions, units and corpora. Nothing here
imports another moeqos package (see docs/architecture.md).
"""
