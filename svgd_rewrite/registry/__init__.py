"""The op registry: the one place that names op types, in two parts.

- ``tensorflow_ops``: TensorFlow facts — views and pass-through ops, variable reads and writes,
  calls, control-flow bodies, loops, shape-only uses, data sources, collectives.
- ``svgd_ops``: SVGD facts — the forward ops F linear in θ, their P, the operands and axes
  (``REGISTRY``, ``DEFAULT_OPS``), and why a consumer of θ keeps the identity transform.

Neither part imports TensorFlow. How to add an op: docs/architecture.md.
"""
from .svgd_ops import (CONV_OPS, DEFAULT_OPS, OPT_IN_OPS, REGISTRY, GradOp, OpSpec,
                       identity_reason)
from .tensorflow_ops import (BACKWARD_POSITION_OPS, CROP_OPS, FORWARD_POSITION_OPS, PAD_OPS,
                             BACK_EDGE_OPS, CALL_OPS, COLLECTIVE_REDUCE_OP,
                             CONTROL_FLOW_BODY_ATTRS, CONTROL_FLOW_OPS, CONTROL_GROUP_OPS,
                             DATA_SOURCE_OPS, FUSED_RNN_OPS,
                             ELEMENTWISE_OPS, FUSED_APPLY_PREFIXES, GATHER_OPS, HANDLE_ONLY_OPS,
                             LOOP_ENTRY_OPS, LOOP_OPS, MULTI_IDENTITY_OPS, PASS_THROUGH_OPS,
                             RESTORE_OP_PREFIXES, SHAPE_OPS, SLICE_OPS, VARIABLE_OPS, VARIABLE_READ_OPS,
                             VIEW_OPS, WRITE_OP_PREFIXES)

__all__ = [
    "CONV_OPS", "DEFAULT_OPS", "OPT_IN_OPS", "REGISTRY", "GradOp", "OpSpec", "identity_reason",
    "BACKWARD_POSITION_OPS", "CROP_OPS", "FORWARD_POSITION_OPS", "PAD_OPS",
    "BACK_EDGE_OPS", "CALL_OPS", "COLLECTIVE_REDUCE_OP", "CONTROL_FLOW_BODY_ATTRS",
    "CONTROL_FLOW_OPS", "CONTROL_GROUP_OPS", "DATA_SOURCE_OPS", "FUSED_RNN_OPS", "ELEMENTWISE_OPS", "FUSED_APPLY_PREFIXES",
    "GATHER_OPS", "HANDLE_ONLY_OPS", "LOOP_ENTRY_OPS", "LOOP_OPS", "MULTI_IDENTITY_OPS",
    "PASS_THROUGH_OPS", "RESTORE_OP_PREFIXES", "SHAPE_OPS", "SLICE_OPS", "VARIABLE_OPS", "VARIABLE_READ_OPS",
    "VIEW_OPS", "WRITE_OP_PREFIXES",
]
