"""The dense elements of an analytic (what-if) profile: real byte sizes, bandwidth-bound time, priors.

For a model description (moeqos.core.descriptions.ModelDescription) each element (moeqos.core.dense)
in bf16, int8 and int4:
- `bytes`: the byte contract's (moeqos.core.dense.DenseShapes, a tied head holding nothing in bf16);
- `seconds`: the bytes a decode token reads from it (a tied head reads the embedding matrix) over the
  device's bandwidth, as the what-if fixed time prices the dense weights;
- `log_ppl`: the prior (moeqos.planner.priors, which the what-if quality model gives the experts when
  all of them are in that precision) times the element's weights per token relative to the experts'
  (top_k experts per layer). An estimate, as every what-if perplexity is.
"""

from __future__ import annotations

from moeqos.core.dense import DenseCost, DenseElement, DenseShapes
from moeqos.core.descriptions import HardwareDescription, ModelDescription
from moeqos.core.precision import Precision
from moeqos.planner.priors import PRIOR_LOG_PPL_INCREASE

WHATIF_DENSE_PRECISIONS = (Precision.BF16, Precision.INT8, Precision.INT4)


def dense_shapes(model: ModelDescription) -> DenseShapes:
    """The attention and head shapes of a described model (head dim = hidden / heads)."""
    return DenseShapes.mixtral(
        model.num_layers,
        model.hidden_size,
        model.num_heads,
        model.num_kv_heads,
        model.vocab_size,
        model.tied_embeddings,
    )


def whatif_dense_costs(model: ModelDescription, hardware: HardwareDescription) -> tuple[DenseCost, ...]:
    """DenseCosts of every element in WHATIF_DENSE_PRECISIONS (see the module docstring)."""
    shapes = dense_shapes(model)
    bandwidth = hardware.tier(hardware.device).bandwidth_bps
    expert_weights = model.num_layers * model.top_k * 3 * model.hidden_size * model.intermediate_size
    costs = []
    for element in DenseElement:
        weights = _weights(shapes, element)
        for precision in WHATIF_DENSE_PRECISIONS:
            held = shapes.element_bytes(element, precision, Precision.BF16)
            read = shapes.read_bytes(element, precision)
            log_ppl = PRIOR_LOG_PPL_INCREASE[precision] * weights / expert_weights
            costs.append(DenseCost(element, precision, held, read / bandwidth, log_ppl))
    return tuple(costs)


def _weights(shapes: DenseShapes, element: DenseElement) -> int:
    matrices = [shapes.head] if element == DenseElement.HEAD else list(shapes.attention)
    return sum(rows * cols for rows, cols in matrices)
