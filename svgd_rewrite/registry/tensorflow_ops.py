"""TensorFlow facts: what op types do to tensors and variables, independent of SVGD.

Every walk of the analysis, the loaders and the inliner asks these tables instead of naming
op types itself. No TensorFlow import (the command line reads the registry at start-up).
"""
from __future__ import annotations

# --- tensors -------------------------------------------------------------------------------
# Ops whose output 0 is their input 0 (gradients and handles flow through them unchanged).
PASS_THROUGH_OPS = frozenset({"Identity", "Snapshot", "StopGradient"})
# Output k is input k (port-aware identity; function-call outputs after inlining).
MULTI_IDENTITY_OPS = frozenset({"IdentityN"})
# Ops that only view (cast, reshape) a variable's value on its way to a consumer: looked
# through, since a forward op linear in the view is linear in θ.
VIEW_OPS = frozenset({"ReadVariableOp", "Identity", "Cast", "Snapshot", "ExpandDims", "Reshape",
                      "Squeeze", "Transpose"})
# Ops that only move, pad or crop positions of a linear op's output on the way to the layer
# output (the Squeeze of Conv1D, the BatchToSpaceND of a dilated convolution), and the ops
# their gradients are made of (Reshape, SpaceToBatchND).
FORWARD_POSITION_OPS = frozenset({"Squeeze", "BatchToSpaceND"})
BACKWARD_POSITION_OPS = frozenset({"SpaceToBatchND", "Reshape", "ExpandDims", "Squeeze"})
CROP_OPS = frozenset({"BatchToSpaceND"})
PAD_OPS = frozenset({"SpaceToBatchND"})
# Ops that read only a tensor's shape (not a consumer of its value).
SHAPE_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank", "ZerosLike", "OnesLike"})
# Ops that select rows of a variable (embedding lookups).
GATHER_OPS = frozenset({"ResourceGather", "GatherV2", "Gather", "GatherNd", "ResourceGatherNd"})
# Fused recurrent layers (cuDNN): the whole sequence in one op, whose body the tool cannot
# enter.
FUSED_RNN_OPS = frozenset({"CudnnRNN", "CudnnRNNV2", "CudnnRNNV3"})
# Ops that cut a tensor into parts (a fused kernel split per gate, say).
SLICE_OPS = frozenset({"Split", "SplitV", "Unpack", "StridedSlice", "Slice"})
# Elementwise arithmetic (a norm's scale and offset, a bias added with +).
ELEMENTWISE_OPS = frozenset({"Mul", "AddV2", "Add", "Sub", "RealDiv", "Neg"})

# --- variables -----------------------------------------------------------------------------
# Reads of a resource variable's value (ref variables are read by Identity).
VARIABLE_READ_OPS = frozenset({"ReadVariableOp"})
# Ops that take a variable's handle without using its value.
HANDLE_ONLY_OPS = frozenset({"VarIsInitializedOp", "IsVariableInitialized", "VariableShape",
                             "DestroyResourceOp", "SaveV2", "Save", "SaveSlices"})
# Ops that write a variable through its handle (input 0).
WRITE_OP_PREFIXES = ("Assign", "Apply", "SparseApply", "ResourceApply", "ResourceSparseApply",
                     "Scatter", "ResourceScatter")
# Fused optimizer ops: input 0 is the trained variable, other variable inputs are its state.
FUSED_APPLY_PREFIXES = ("Apply", "SparseApply", "ResourceApply", "ResourceSparseApply")
# Ops that only group control dependencies (a train op, an initializer group).
CONTROL_GROUP_OPS = frozenset({"NoOp"})
# Checkpoint restores (a TF1 graph's restore ops write every variable).
RESTORE_OP_PREFIXES = ("Restore",)
# TF1 graphs: variables as nodes of the graph (ref or resource).
VARIABLE_OPS = {"VariableV2": "ref", "Variable": "ref", "VarHandleOp": "resource"}

# --- functions and control flow ------------------------------------------------------------
# Function calls that the load stage inlines.
CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
# Functional control flow and the attributes naming its bodies (not inlined: θ used there is
# reported, not rewritten). While's body inputs are the op's inputs; If/Case's drop input 0.
CONTROL_FLOW_BODY_ATTRS = {
    "If": ("then_branch", "else_branch"), "StatelessIf": ("then_branch", "else_branch"),
    "While": ("body",), "StatelessWhile": ("body",),
    "Case": ("branches",), "StatelessCase": ("branches",)}
CONTROL_FLOW_OPS = frozenset(CONTROL_FLOW_BODY_ATTRS)
LOOP_OPS = frozenset({"While", "StatelessWhile"})
# v1 loops: a tensor entering a loop's frame, and the op whose output is the back edge (left
# out of topological orders).
LOOP_ENTRY_OPS = frozenset({"Enter", "RefEnter"})
BACK_EDGE_OPS = frozenset({"NextIteration", "RefNextIteration"})

# --- data and replicas ---------------------------------------------------------------------
# Where a training graph's data comes from: a gradient depends on one of these.
DATA_SOURCE_OPS = frozenset({"Placeholder", "PlaceholderWithDefault", "IteratorGetNext",
                             "IteratorGetNextSync", "IteratorGetNextAsOptional"})
# tf.distribute's all-reduce between workers: CollectiveReduceV2(input, group_size,
# group_key, instance_key, ordering_token...).
COLLECTIVE_REDUCE_OP = "CollectiveReduceV2"
