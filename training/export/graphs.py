"""The ONNX graphs of a bundle: tiny wrappers with tensor-only signatures, and their export.

Exporter: ``torch.onnx.export(..., dynamo=False)`` (the TorchScript exporter) at opset 17. Why not the
dynamo exporter: the step graph must accept a prefix of length ``S = 0 .. D-1`` from one file, and
``torch.export`` specialises dimensions of size 0 and 1, so a ``(N, 0)`` prefix cannot share a graph
with longer ones; the TorchScript exporter records ``prefix.shape[1]`` as a runtime shape and the
parity tests check every ``S`` against torch. Each wrapper is put in eval mode around the export
(the exporter restores the *wrapper's* mode afterwards, which would otherwise switch dropout on in
the wrapped model).

One graph rewrite follows the export: ONNX Runtime has no ``EyeLike`` kernel for bool tensors, which
``torch.eye(t, dtype=torch.bool)`` exports to, so such nodes are run in float between two ``Cast``
nodes (``_bool_eyelike_to_cast``); the parity tests cover the result.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from service.manifest import GraphSpec, TensorSpec, sha256_file
from training.generator.model import SidrecGenerator
from training.tokenizer.model import HiDVAE

__all__ = [
    "OPSET",
    "EncoderGraph",
    "ItemGraph",
    "StepGraph",
    "TagHeadsGraph",
    "TokenizerGraph",
    "UserGraph",
    "export_graph",
]

OPSET = 17
EXPORTER = f"torch.onnx.export(dynamo=False) torch {torch.__version__}"


class TokenizerGraph(nn.Module):
    """Cold start: item text embedding (N, E) -> codes (N, L) and per-level tag logits.

    A tokenizer trained on [unit text ; behaviour] (``collaborative_dims`` > 0) sees a new item the way
    it saw items without behaviour: unit text, zeros for the behaviour part.
    """

    def __init__(self, tokenizer: HiDVAE, collaborative_dims: int = 0) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.collaborative_dims = collaborative_dims

    def forward(self, embedding: Tensor) -> tuple[Tensor, ...]:
        if self.collaborative_dims:
            unit = torch.nn.functional.normalize(embedding, dim=-1)
            embedding = torch.cat([unit, unit.new_zeros(unit.shape[0], self.collaborative_dims)], -1)
        latents = self.tokenizer.encode(embedding)  # (N, latent)
        codes = self.tokenizer.quantizer(latents).indices  # (N, L)
        return (codes, *self.tokenizer.tag_logits_from_codes(codes))


class TagHeadsGraph(nn.Module):
    """Explanations: generated codes (N, L) -> per-level tag probabilities [(N, C_l)].

    ``temperatures`` (one per level, fitted on what the run recommends to validation users) divide
    the logits, so the confidence an explanation shows is calibrated; the most likely tag never
    changes.
    """

    def __init__(self, tokenizer: HiDVAE, temperatures: list[float] | None = None) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.temperatures = temperatures or [1.0] * len(tokenizer.tag_heads)

    def forward(self, codes: Tensor) -> tuple[Tensor, ...]:
        logits = self.tokenizer.tag_logits_from_codes(codes)
        return tuple((lg / t).softmax(-1) for lg, t in zip(logits, self.temperatures, strict=False))


class EncoderGraph(nn.Module):
    """History tokens (B, T) + codes (B, T, D) -> memory (B, T, d); run once per request."""

    def __init__(self, generator: SidrecGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, history_tokens: Tensor, history_codes: Tensor) -> Tensor:
        return self.generator.encode(history_tokens, history_codes)


class UserGraph(nn.Module):
    """Dot-product ranking: memory (B, T, d) -> the user vector at the last position (B, item_dim)."""

    def __init__(self, generator: SidrecGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, memory: Tensor) -> Tensor:
        return self.generator.user_vectors(memory[:, -1])


class ItemGraph(nn.Module):
    """Dot-product ranking of cold-start items: codes (N, D) -> item vectors (N, item_dim).

    A new item has no trained hash row, so it gets the reserved "unknown item" row (what training's
    hash dropout taught the model to read) beside the semantic embedding of its codes.
    """

    def __init__(self, generator: SidrecGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, codes: Tensor) -> Tensor:
        unknown = torch.full_like(codes[:, 0], self.generator.unknown_token)
        return self.generator.item_vectors(unknown, codes)


class StepGraph(nn.Module):
    """One ID level over batch × beam: memory (N, T, d), mask (N, T), prefix (N, S) -> logits (N, K)."""

    def __init__(self, generator: SidrecGenerator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, memory: Tensor, memory_mask: Tensor, prefix: Tensor) -> Tensor:
        return self.generator.step(memory, memory_mask, prefix)


_DTYPES = {torch.float32: "float32", torch.int64: "int64", torch.bool: "bool"}


def _specs(
    names: Sequence[str], tensors: Sequence[Tensor], dynamic: dict[str, dict[int, str]]
) -> list[TensorSpec]:
    return [
        TensorSpec(
            name=name,
            dtype=_DTYPES[tensor.dtype],  # type: ignore[arg-type]
            shape=[dynamic.get(name, {}).get(axis, size) for axis, size in enumerate(tensor.shape)],
        )
        for name, tensor in zip(names, tensors, strict=True)
    ]


def _bool_eyelike_to_cast(model: onnx.ModelProto) -> None:
    """Run bool ``EyeLike`` nodes in float: ``Cast(EyeLike(Cast(x, float)), bool)``, in place."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    graph = model.graph
    for position in reversed(range(len(graph.node))):
        node = graph.node[position]
        if node.op_type != "EyeLike" or types.get(node.output[0]) != onnx.TensorProto.BOOL:
            continue
        float_in, float_out, bool_out = f"{node.output[0]}_in", f"{node.output[0]}_float", node.output[0]
        before = onnx.helper.make_node("Cast", [node.input[0]], [float_in], to=onnx.TensorProto.FLOAT)
        after = onnx.helper.make_node("Cast", [float_out], [bool_out], to=onnx.TensorProto.BOOL)
        del node.attribute[:]
        node.input[0], node.output[0] = float_in, float_out
        graph.node.insert(position + 1, after)
        graph.node.insert(position, before)


def export_graph(
    module: nn.Module,
    example: tuple[Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic: dict[str, dict[int, str]],
    metadata: dict[str, str],
) -> GraphSpec:
    """Export ``module`` at ``OPSET``, stamp ``metadata`` into the graph and describe it for the manifest."""
    module.eval()
    with torch.no_grad():
        outputs = module(*example)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # tracer warnings about Python ints from shapes (checked by parity tests)
            torch.onnx.export(
                module,
                example,
                str(path),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic,
                opset_version=OPSET,
                dynamo=False,
            )
    module.eval()
    model = onnx.load(str(path))
    _bool_eyelike_to_cast(model)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return GraphSpec(
        file=path.name,
        sha256=sha256_file(path),
        opset=OPSET,
        exporter=EXPORTER,
        inputs=_specs(input_names, example, dynamic),
        outputs=_specs(output_names, outputs, dynamic),
    )
