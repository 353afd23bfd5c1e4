"""FlattenInputsOutputs: make the exported graph take flat tensors and return a flat tuple of tensors.

``ExportedProgram.module()`` keeps the model's calling convention: its code flattens a pytree of
inputs (tensors and constants such as ``return_dict=True``) and rebuilds a pytree of outputs (a
diffusers output object, a tuple). Everything downstream (cache branches, specialized graphs,
ONNX export, the step engine) wants plain positional tensors in and a flat tuple of tensors out.
This pass switches the graph to plain code generation, names every placeholder with its public
name, drops the placeholders of constant inputs, and returns only the tensor outputs (the
:class:`~harmonica_compile.capture.CapturedModel` rebuilds the caller's output object around them).

It changes how the graph is called, not what it computes.
"""

from __future__ import annotations

import torch.utils._pytree as pytree
from torch import fx

from ..capture import CapturedModel
from ..errors import CaptureError, PassError
from ..names import INPUT_NAME, INPUT_NAMES, OUTPUT_NAMES
from .infra import GraphPass, PassResult, output_node

__all__ = ["FlattenInputsOutputs"]


class FlattenInputsOutputs(GraphPass):
    """Take flat tensor inputs and return a flat tuple of tensor outputs, with public names."""

    name = "flatten_inputs_outputs"

    def __init__(self, captured: CapturedModel):
        self.captured = captured

    def requires(self, gm: fx.GraphModule) -> None:
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        leaves = self.captured.inputs
        if len(placeholders) != len(leaves):
            raise CaptureError(
                f"{self.captured.model_class}: export produced {len(placeholders)} inputs for {len(leaves)} input "
                "leaves; this input structure is not supported"
            )

    def call(self, gm: fx.GraphModule) -> PassResult:
        graph = gm.graph
        owner = self.captured.model_class
        graph._codegen = fx.graph.CodeGen()
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        removed = 0
        for node, leaf in zip(placeholders, self.captured.inputs, strict=True):
            node.meta[INPUT_NAME] = leaf.name
            if not leaf.is_tensor:
                if node.users:
                    raise CaptureError(
                        f"{owner}: non-tensor input '{leaf.name}' is used inside the graph; pass it as a tensor"
                    )
                graph.erase_node(node)
                removed += 1
        out = output_node(graph)
        values = list(pytree.tree_leaves(out.args[0]))
        index = self.captured.output_leaf_index
        if len(values) != len(index):
            raise PassError(f"{self.name}: the graph returns {len(values)} leaves, the capture recorded {len(index)}")
        tensors = tuple(v for v, i in zip(values, index, strict=True) if i is not None)
        if not all(isinstance(v, fx.Node) for v in tensors):
            raise PassError(f"{self.name}: an output the capture recorded as a tensor is a constant in the graph")
        out.args = (tensors,)
        gm.meta[OUTPUT_NAMES] = tuple(self.captured.output_names)
        gm.meta[INPUT_NAMES] = tuple(n.meta[INPUT_NAME] for n in graph.nodes if n.op == "placeholder")
        gm.recompile()
        return PassResult(gm, True, {"removed_non_tensor_inputs": removed})

    def ensures(self, gm: fx.GraphModule) -> None:
        if tuple(gm.meta[INPUT_NAMES]) != self.captured.input_names:
            raise PassError(
                f"{self.name}: the graph takes {list(gm.meta[INPUT_NAMES])}, the capture's tensor inputs are "
                f"{list(self.captured.input_names)}"
            )
