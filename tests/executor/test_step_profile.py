"""The decode-step breakdown on a tiny random Mixtral: every part measured, labels removed after."""

import math

from moeqos.executor.loader import moe_blocks
from moeqos.executor.step_profile import PARTS, decode_breakdown


def test_breakdown_splits_a_step_into_its_parts(runtime):
    blocks = moe_blocks(runtime.lm, runtime.adapter)
    runners = [b.runner for b in blocks]
    assert runtime.decoder is not None  # the steps run on the own decode step, labelled through it
    found = decode_breakdown(runtime, runtime.lm, [5, 6, 7, 8], steps=3, decoder=runtime.decoder)
    assert found.steps == 3 and found.step_seconds > 0
    assert list(found.parts) == list(PARTS)
    assert math.isclose(sum(found.parts.values()), found.step_seconds, rel_tol=1e-9)
    measured = ("experts", "routing", "attention", "norms", "lm_head", "embedding")
    assert all(found.parts[p] > 0 for p in measured), found.parts
    assert found.parts["experts"] < found.step_seconds
    assert found.top_ops and all(sec > 0 and calls > 0 for _, sec, calls in found.top_ops)
    # the hooks and runner wrappers are gone: serving pays nothing for the profile
    assert [b.runner for b in blocks] == runners
    modules = [*runtime.lm.modules(), *runtime.decoder.modules()]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in modules)
