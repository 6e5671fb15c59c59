"""``step`` is exportable as CONTRACTS §3 requires: one ONNX graph with a dynamic prefix length S
(including S = 0) reproduces the torch logits at every level. ``encode`` likewise with dynamic B, T."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.generator.model import GeneratorConfig, SidrecGenerator

from .conftest import CODEBOOK


class Step(torch.nn.Module):
    def __init__(self, model: SidrecGenerator) -> None:
        super().__init__()
        self.model = model

    def forward(self, memory: torch.Tensor, memory_mask: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        return self.model.step(memory, memory_mask, prefix)


class Encode(Step):
    def forward(self, tokens: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.model.encode(tokens, codes)


@pytest.mark.slow
def test_step_and_encode_export_with_dynamic_shapes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SidrecGenerator(
        GeneratorConfig(n_items=20, id_length=4, codebook_size=CODEBOOK, d_model=16, max_len=6)
    ).eval()
    memory = torch.randn(3, 6, 16)
    mask = torch.tensor([[False, False, True, True, True, True]] * 2 + [[True] * 6])
    n, t, s = torch.export.Dim("N"), torch.export.Dim("T", max=6), torch.export.Dim("S", max=3)
    torch.onnx.export(
        Step(model),
        (memory, mask, torch.zeros(3, 2, dtype=torch.long)),
        tmp_path / "step.onnx",
        input_names=["memory", "memory_mask", "prefix"],
        output_names=["logits"],
        dynamo=True,
        dynamic_shapes={"memory": {0: n, 1: t}, "memory_mask": {0: n, 1: t}, "prefix": {0: n, 1: s}},
    )
    session = ort.InferenceSession(str(tmp_path / "step.onnx"), providers=["CPUExecutionProvider"])
    for level in range(4):
        prefix = torch.randint(0, CODEBOOK, (3, level))
        got = session.run(
            None, {"memory": memory.numpy(), "memory_mask": mask.numpy(), "prefix": prefix.numpy()}
        )
        np.testing.assert_allclose(got[0], model.step(memory, mask, prefix).detach().numpy(), atol=1e-4)

    tokens = torch.tensor([[0, 0, 3, 4, 5, 21], [1, 2, 3, 4, 5, 6]])
    codes = torch.randint(0, CODEBOOK, (2, 6, 4))
    b, t2 = torch.export.Dim("B"), torch.export.Dim("T2", max=6)
    torch.onnx.export(
        Encode(model),
        (tokens, codes),
        tmp_path / "encode.onnx",
        input_names=["tokens", "codes"],
        output_names=["memory"],
        dynamo=True,
        dynamic_shapes={"tokens": {0: b, 1: t2}, "codes": {0: b, 1: t2}},
    )
    session = ort.InferenceSession(str(tmp_path / "encode.onnx"), providers=["CPUExecutionProvider"])
    short = tokens[:, 2:]
    got = session.run(None, {"tokens": short.numpy(), "codes": codes[:, 2:].numpy()})
    np.testing.assert_allclose(got[0], model.encode(short, codes[:, 2:]).detach().numpy(), atol=1e-4)
