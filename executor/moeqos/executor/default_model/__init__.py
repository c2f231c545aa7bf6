"""The embedded default model: SmolLM2-135M-Instruct sparse-upcycled into an 8-expert Mixtral.

`upcycle` turns any dense Llama-style model into an equivalent Mixtral, `writer` writes it as a
standard per-expert checkpoint, `build` makes the cached directory that `moeqos.executor.default_model.location` points to.
"""
