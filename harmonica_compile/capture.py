"""Capture: a PyTorch model and example inputs to the exported FX graph and its input/output specs.

``capture(model, example_inputs)`` runs ``torch.export`` (non-strict, so models with Python control
flow in ``forward`` such as diffusers' transformers work) with the batch dimension dynamic and
returns a :class:`CapturedModel`: the exported ``GraphModule`` (weights held as detached buffers
that share the user's storage), the spec of every input leaf, and what is needed to accept the
caller's ``(args, kwargs)`` and to rebuild the caller's output object (a diffusers output, a
tuple, a tensor). Capture runs no graph pass: :func:`harmonica_compile.prepare` runs the clean-up
passes, flattens the graph to tensors in and a tuple of tensors out
(:class:`~harmonica_compile.passes.FlattenInputsOutputs`) and finds the cache sites, as one
pipeline. A captured model is callable before and after that.

Example:
    >>> import torch
    >>> from harmonica_compile.models import DiT_models
    >>> model = DiT_models["DiT-S/8"](input_size=16, num_classes=10)
    >>> cap = capture(model, (torch.randn(2, 4, 16, 16), torch.tensor([9, 9]), torch.tensor([1, 10])))
    >>> cap.input_names, cap.output_names
    (('x', 't', 'y'), ('output',))
    >>> cap(torch.randn(8, 4, 16, 16), torch.full((8,), 5), torch.zeros(8, dtype=torch.long)).shape
    torch.Size([8, 8, 16, 16])
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx, nn

from .errors import CaptureError, InputError
from .names import OUTPUT_NAMES

__all__ = ["CapturedModel", "InputSpec", "capture", "normalize_example_inputs"]

#: Input names that carry the denoising timestep (used to find the step from the timestep value).
TIMESTEP_NAMES = ("timestep", "timesteps", "t", "time", "sigma", "sigmas")


@dataclass(frozen=True)
class InputSpec:
    """One leaf of the model's (flattened) inputs."""

    name: str
    is_tensor: bool
    #: For non-tensor leaves: the value the graph was specialized to (calls must pass the same).
    constant: Any = None
    #: For tensors: whether dim 0 is the (dynamic) batch dimension.
    batched: bool = False
    #: For tensors: the shape with ``-1`` in place of a dynamic batch.
    shape: tuple[int, ...] = ()
    dtype: torch.dtype | None = None

    def describe_shape(self) -> str:
        return "[" + ", ".join("batch" if (i == 0 and self.batched) else str(d) for i, d in enumerate(self.shape)) + "]"


@dataclass
class CapturedModel:
    """A captured model: a flat graph plus the specs to call it like the original module."""

    graph_module: fx.GraphModule
    inputs: tuple[InputSpec, ...]
    in_spec: pytree.TreeSpec
    out_spec: pytree.TreeSpec
    #: Names of the tensor outputs (pytree key paths such as ``sample`` or ``output``).
    output_names: tuple[str, ...]
    #: For each output leaf: index into the graph's outputs, or ``None`` for a constant leaf.
    output_leaf_index: tuple[int | None, ...]
    output_constants: tuple[Any, ...]
    signature: inspect.Signature
    model_class: str
    #: Flat tensor example inputs at the batch used for tracing (at least 2).
    example_inputs: tuple[torch.Tensor, ...]
    batch_size: int
    #: The passes that ran on the graph (``prepare``), with what each changed.
    history: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def is_flat(self) -> bool:
        """Whether the graph takes flat tensors (after FlattenInputsOutputs) or the model's inputs."""
        return OUTPUT_NAMES in self.graph_module.meta

    @property
    def input_names(self) -> tuple[str, ...]:
        """Names of the tensor inputs, in placeholder order."""
        return tuple(i.name for i in self.inputs if i.is_tensor)

    @property
    def tensor_inputs(self) -> tuple[InputSpec, ...]:
        return tuple(i for i in self.inputs if i.is_tensor)

    def timestep_input(self) -> int | None:
        """Index (among tensor inputs) of the timestep input, found by name; ``None`` if absent."""
        names = self.input_names
        for alias in TIMESTEP_NAMES:
            if alias in names:
                return names.index(alias)
        return None

    def input_roles(self) -> list[str]:
        """For each tensor input: ``latent`` (the first batched floating-point input), ``timestep``
        (found by name) or ``condition`` (everything else)."""
        t_index = self.timestep_input()
        roles = []
        latent_seen = False
        for i, spec in enumerate(self.tensor_inputs):
            if i == t_index:
                roles.append("timestep")
            elif not latent_seen and spec.batched and spec.dtype is not None and spec.dtype.is_floating_point:
                roles.append("latent")
                latent_seen = True
            else:
                roles.append("condition")
        return roles

    def flatten_inputs(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[torch.Tensor]:
        """The caller's ``(args, kwargs)`` to the graph's flat tensor inputs, checked."""
        bound = _bind(self.signature, tuple(args), dict(kwargs), self.model_class)
        leaves, spec = pytree.tree_flatten(((), bound))
        if spec != self.in_spec:
            raise InputError(
                f"{self.model_class}: the inputs have another structure than at capture "
                f"(got {_leaf_names(bound)}, expected {[i.name for i in self.inputs]}); "
                "pass the same arguments (and dict keys) as the example inputs, or capture again"
            )
        flat: list[torch.Tensor] = []
        batch: int | None = None
        for leaf, spec_ in zip(leaves, self.inputs, strict=True):
            if not spec_.is_tensor:
                if not _same_constant(leaf, spec_.constant):
                    raise InputError(
                        f"{self.model_class}: input '{spec_.name}' was {spec_.constant!r} at capture, got "
                        f"{leaf!r}; the graph is specialized to that value, so capture again with it"
                    )
                continue
            if not isinstance(leaf, torch.Tensor):
                raise InputError(
                    f"{self.model_class}: input '{spec_.name}' must be a tensor of shape "
                    f"{spec_.describe_shape()}, got {type(leaf).__name__}"
                )
            expected = list(spec_.shape)
            if spec_.batched and leaf.ndim == len(expected):
                batch = leaf.shape[0] if batch is None else batch
                expected[0] = batch
            if list(leaf.shape) != expected:
                raise InputError(
                    f"{self.model_class}: input '{spec_.name}' has shape {list(leaf.shape)}, expected "
                    f"{spec_.describe_shape()}"
                    + (f" with batch {batch}" if spec_.batched and batch is not None else "")
                )
            if leaf.dtype != spec_.dtype:
                raise InputError(
                    f"{self.model_class}: input '{spec_.name}' has dtype {leaf.dtype}, expected {spec_.dtype}; "
                    f"convert it with .to({spec_.dtype})"
                )
            flat.append(leaf)
        return flat

    def unflatten_outputs(self, flat: Sequence[torch.Tensor]) -> Any:
        """The graph's flat tensor outputs back to the model's output structure."""
        leaves = [
            self.output_constants[i] if idx is None else flat[idx] for i, idx in enumerate(self.output_leaf_index)
        ]
        return pytree.tree_unflatten(leaves, self.out_spec)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        flat = self.flatten_inputs(args, kwargs)  # checks every input, in both conventions
        if not self.is_flat:  # the exported code flattens and rebuilds the pytrees itself
            return self.graph_module(**_bind(self.signature, tuple(args), dict(kwargs), self.model_class))
        return self.unflatten_outputs(self.graph_module(*flat))

    def batch_of(self, flat: Sequence[torch.Tensor]) -> int:
        for spec_, t in zip(self.tensor_inputs, flat, strict=True):
            if spec_.batched:
                return int(t.shape[0])
        return 1


def normalize_example_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``example_inputs`` as ``(args, kwargs)``: a tuple of positional args, a dict of keyword args,
    a single tensor, or a pair ``(args_tuple, kwargs_dict)``."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if (
        isinstance(example_inputs, tuple | list)
        and len(example_inputs) == 2
        and isinstance(example_inputs[0], tuple | list)
        and isinstance(example_inputs[1], Mapping)
    ):
        return tuple(example_inputs[0]), dict(example_inputs[1])
    if isinstance(example_inputs, tuple | list):
        return tuple(example_inputs), {}
    raise CaptureError(
        f"example_inputs must be a tuple of positional args, a dict of keyword args, or (args, kwargs); "
        f"got {type(example_inputs).__name__}"
    )


def _bind(sig: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any], owner: str) -> dict[str, Any]:
    """Bind a call to ``forward``'s signature: every parameter as a keyword, defaults filled in,
    in signature order, so positional and keyword calls flatten the same way."""
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        raise InputError(f"{owner}.forward{sig}: {e}") from e
    bound.apply_defaults()
    out: dict[str, Any] = {}
    for name, param in sig.parameters.items():
        value = bound.arguments.get(name)
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise CaptureError(f"{owner}.forward takes *{name}; pass those inputs by name instead")
            continue
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value or {})
            continue
        out[name] = value
    return out


def _leaf_names(tree: Any) -> list[str]:
    paths, _ = pytree.tree_flatten_with_path(tree)
    return [_path_name(p) for p, _ in paths]


def _path_name(path: Sequence[Any]) -> str:
    parts: list[str] = []
    for key in path:
        if isinstance(key, pytree.MappingKey):
            parts.append(str(key.key))
        elif isinstance(key, pytree.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, pytree.GetAttrKey):
            parts.append(str(key.name))
        else:
            parts.append(str(key))
    return ".".join(parts)


def _spec_leaf_names(spec: pytree.TreeSpec, prefix: str = "") -> list[str]:
    """Key-path names of a TreeSpec's leaves, from the spec alone (diffusers registers its output
    classes without key functions, so ``tree_flatten_with_path`` cannot name them)."""
    if spec.is_leaf():
        return [prefix]
    # torch >= 2.10 has children() and deprecates children_specs; older releases only have the field
    children = list(spec.children()) if callable(getattr(spec, "children", None)) else list(spec.children_specs)
    context = spec.context
    if isinstance(context, list | tuple) and len(context) == len(children) and all(isinstance(c, str) for c in context):
        keys = list(context)
    else:
        keys = [str(i) for i in range(len(children))]
    names: list[str] = []
    for key, child in zip(keys, children, strict=True):
        names.extend(_spec_leaf_names(child, f"{prefix}.{key}" if prefix else key))
    return names


def _output_name(path_name: str) -> str:
    if not path_name:
        return "output"
    return f"output.{path_name}" if path_name.split(".")[0].isdigit() else path_name


def _same_constant(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # objects whose == is elementwise or raises
        return a is b


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:400]


def _mutates(graph: torch.fx.Graph) -> bool:
    return any(
        node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload) and node.target._schema.is_mutable
        for node in graph.nodes
    )


def capture(
    model: nn.Module,
    example_inputs: Any,
    *,
    dynamic_batch: bool = True,
    max_batch: int = 4096,
) -> CapturedModel:
    """Capture ``model`` (in eval mode) with torch.export; see the module docstring.

    ``example_inputs`` is a tuple of positional args, a dict of keyword args, or ``(args, kwargs)``.
    With ``dynamic_batch``, dim 0 of every tensor input whose leading size equals the batch is
    exported as one dynamic dimension, so the capture serves batch 1, 2 (CFG) and larger alike.
    """
    if not isinstance(model, nn.Module):
        raise CaptureError(f"capture expects a torch.nn.Module, got {type(model).__name__}")
    owner = type(model).__name__
    args, kwargs = normalize_example_inputs(example_inputs)
    sig = inspect.signature(model.forward)
    bound = _bind(sig, args, kwargs, owner)
    for name, value in bound.items():
        if name in TIMESTEP_NAMES and isinstance(value, int | float) and not isinstance(value, bool):
            raise CaptureError(
                f"{owner}: input '{name}' is the Python number {value!r}; export would bake it into the "
                f"graph. Pass it as a tensor, e.g. torch.tensor([{value!r}] * batch)"
            )

    leaves, _ = pytree.tree_flatten(((), bound))
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    if not tensors:
        raise CaptureError(f"{owner}: the example inputs hold no tensor; pass at least one tensor input")
    batch = next((int(t.shape[0]) for t in tensors if t.ndim >= 1), 1)

    def is_batched(x: Any) -> bool:
        return dynamic_batch and isinstance(x, torch.Tensor) and x.ndim >= 1 and x.shape[0] == batch

    # A batch of 1 would be specialized by export (0/1 specialization): trace at batch 2 instead.
    if dynamic_batch and batch == 1:
        bound = pytree.tree_map(lambda x: torch.cat([x, x]) if is_batched(x) else x, bound)
        batch = 2

    with _eval_mode(model):
        try:
            with torch.no_grad():
                model(**bound)
        except Exception as e:
            raise CaptureError(
                f"{owner} rejected the example inputs ({type(e).__name__}: {_first_line(e)}); "
                "check their shapes and dtypes against the model's forward()"
            ) from e
        batch_dim = torch.export.Dim("batch", min=1, max=max_batch)
        dynamic_shapes = {
            name: pytree.tree_map(lambda x: {0: batch_dim} if is_batched(x) else None, value)
            for name, value in bound.items()
        }
        try:
            ep = torch.export.export(model, (), bound, dynamic_shapes=dynamic_shapes, strict=False)
        except Exception as e:
            raise CaptureError(
                f"torch.export could not capture {owner}: {type(e).__name__}: {_first_line(e)}. "
                "The forward must be traceable with a dynamic batch: avoid data-dependent Python "
                "control flow on tensor values (e.g. `if t[0].item() > 500`), or pass dynamic_batch=False"
            ) from e

    if _mutates(ep.graph):
        # An in-place op on a value the forward made itself (diffusers' PixArt divides its position
        # embedding's frequencies in place at sizes other than sample_size): functionalize it, with
        # no decompositions, so that every graph after capture is functional.
        ep = ep.run_decompositions({})
    gm = ep.module()
    # ep.module() re-checks the pytree inputs in a pre-hook; flatten_inputs checks them instead.
    gm._forward_pre_hooks.clear()
    gm._forward_pre_hooks_with_kwargs.clear()
    _detach_weights(gm)
    paths, in_spec = pytree.tree_flatten_with_path(((), bound))
    out_spec = ep.call_spec.out_spec
    if out_spec is None:
        raise CaptureError(f"{owner}: torch.export recorded no output structure")
    out_index, out_consts, out_names = _output_leaves(gm, out_spec, owner)
    specs = []
    for path, leaf in paths:
        name = _path_name(path[1:])  # drop the (args, kwargs) level
        if isinstance(leaf, torch.Tensor):
            shape = tuple(-1 if (i == 0 and is_batched(leaf)) else int(d) for i, d in enumerate(leaf.shape))
            specs.append(InputSpec(name, True, batched=is_batched(leaf), shape=shape, dtype=leaf.dtype))
        else:
            specs.append(InputSpec(name, False, constant=leaf))
    return CapturedModel(
        graph_module=gm,
        inputs=tuple(specs),
        in_spec=in_spec,
        out_spec=out_spec,
        output_names=out_names,
        output_leaf_index=out_index,
        output_constants=out_consts,
        signature=sig,
        model_class=owner,
        example_inputs=tuple(x for _, x in paths if isinstance(x, torch.Tensor)),
        batch_size=batch,
    )


def _output_leaves(
    gm: fx.GraphModule, out_spec: pytree.TreeSpec, owner: str
) -> tuple[tuple[int | None, ...], tuple[Any, ...], tuple[str, ...]]:
    """Read the exported outputs (nothing is changed): for each output leaf, its index among the
    tensor outputs (``None`` for a constant leaf), the constants, and the tensor outputs' names."""
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    values = list(pytree.tree_leaves(out_node.args[0]))
    index: list[int | None] = []
    consts: list[Any] = []
    names: list[str] = []
    for value, name in zip(values, _spec_leaf_names(out_spec), strict=True):
        if isinstance(value, fx.Node):
            index.append(len(names))
            consts.append(None)
            names.append(_output_name(name))
        else:
            index.append(None)
            consts.append(value)
    if not names:
        raise CaptureError(f"{owner}: the model returns no tensor")
    return tuple(index), tuple(consts), tuple(names)


def _detach_weights(gm: fx.GraphModule) -> None:
    """Hold weights as plain tensors sharing the user's storage: nothing we run trains or touches
    the user's parameters, and graphs made from this one share the weights."""
    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        owner_mod, _, attr = node.target.rpartition(".")
        mod = gm.get_submodule(owner_mod) if owner_mod else gm
        value = getattr(mod, attr)
        if isinstance(value, nn.Parameter):
            delattr(mod, attr)
            mod.register_buffer(attr, value.detach(), persistent=True)
