"""Prior quality numbers, used where a profile has too few measured plans to fit the quality model.

`PRIOR_LOG_PPL_INCREASE[p]` is the increase of log-perplexity when *every* expert is stored in
precision p (round-to-nearest, no calibration), relative to 16-bit weights. The quality model spreads
it over the experts in proportion to their frequency-weighted quantization error (or frequency alone
when the error was not measured), so a plan with a fraction of its expert calls in p gets about that
fraction of the increase.

Source (numbers as recalled from the published table, WikiText-2, 2048-token context): OmniQuant
(Shao et al., ICLR 2024), Table 1, weight-only round-to-nearest on LLaMA-2-7B:
    FP16 5.47 | W4A16 g128 RTN 5.72 | W3A16 g128 RTN 6.66 | W2A16 g64 RTN 431.97
so int4 = ln(5.72/5.47) = 0.045, int3 = ln(6.66/5.47) = 0.197, int2 = ln(431.97/5.47) = 4.37.
int8 per-row RTN is within ~0.01 perplexity of FP16 in the LLM.int8()/SmoothQuant weight-only tables:
ln(5.48/5.47) = 0.002. The executor uses groups of 64 (slightly better than g128), and these numbers
quantize every linear layer where moeqos quantizes only experts (~96% of Mixtral's weights), so the
priors are mildly pessimistic for int4/int3. fp32/bf16/fp16 are taken as lossless (0).

A precision naming its group size (`int4g32`) has no figure in that table. Its prior is the bare
name's scaled by (R(g) / R(64))**2, R(n) the expected range of n standard normal weights (4.14, 4.69,
5.19 for 32, 64, 128; by simulation): the RTN step is the group's range over the levels, and the
error's variance goes with the step squared. An assumption for Gaussian weights, not a measurement;
a measured profile's quality points replace it.
"""

from __future__ import annotations

import math

from moeqos.core.precision import Precision

PRIOR_SOURCE = (
    "prior: per-precision log-ppl increase of RTN weight-only quantization (OmniQuant Table 1, LLaMA-2-7B)"
)

PRIOR_LOG_PPL_INCREASE: dict[Precision, float] = {
    Precision.FP32: 0.0,
    Precision.BF16: 0.0,
    Precision.FP16: 0.0,
    Precision.INT8: math.log(5.48 / 5.47),
    Precision.INT4: math.log(5.72 / 5.47),
    Precision.INT3: math.log(6.66 / 5.47),
    Precision.INT2: math.log(431.97 / 5.47),
}
GAUSSIAN_GROUP_RANGE = {32: 4.14, 64: 4.69, 128: 5.19}
"""Expected range (max - min) of n standard normal samples, by group size n."""

PRIOR_LOG_PPL_INCREASE |= {
    p: PRIOR_LOG_PPL_INCREASE[p.base] * (GAUSSIAN_GROUP_RANGE[p.group(64)] / GAUSSIAN_GROUP_RANGE[64]) ** 2
    for p in Precision
    if p.group_size
}
