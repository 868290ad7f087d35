"""Int8 weight-only linear layers: few rows take the int8 kernel, many the bfloat16 one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.llama import BatchEngine, LoadConfig, SamplingParams
from models.llama.quant import Int8Linear, quantize_int8
from tests.unit.models.test_llama_chat import tiny_model


def test_few_rows_use_int8_weights_close_to_the_bfloat16_layer() -> None:
    torch.manual_seed(0)
    source = nn.Linear(64, 32, bias=False)
    layer = Int8Linear(source, max_rows=4)
    x = torch.randn(2, 3, 64).bfloat16()  # 6 rows: bfloat16 weights
    assert torch.equal(layer(x), nn.functional.linear(x, source.weight.bfloat16()))
    few = torch.randn(1, 2, 64)  # 2 rows: int8 weights
    out = layer(few.bfloat16())
    assert out.shape == (1, 2, 32)
    expected = few @ source.weight.detach().T
    assert torch.allclose(out.float(), expected, atol=0.05 * float(expected.abs().max()))


def test_quantized_model_generates_like_the_bfloat16_one() -> None:
    model = tiny_model().to(torch.bfloat16)
    reference = BatchEngine(model)
    reference.submit([5, 6, 7, 8], SamplingParams(max_tokens=4))
    expected = reference.run()[0].token_ids
    assert quantize_int8(model) == 2 * 7 + 1  # q k v o gate up down per layer, lm_head
    engine = BatchEngine(model)
    engine.submit([5, 6, 7, 8], SamplingParams(max_tokens=4))
    (result,) = engine.run()
    assert result.completion_tokens == 4
    assert result.token_ids[0] == expected[0]


def test_int8_needs_bfloat16_compute() -> None:
    with pytest.raises(ValueError, match="bfloat16"):
        LoadConfig(dtype="float32", quantize="int8")
    assert LoadConfig(quantize="int8").dtype == "auto"
