"""BitLinear b1.58: the quantizers, the straight-through estimator, packing, the serving form, and
transformers' AutoBitLinear as an independent reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.integrations.bitnet import AutoBitLinear

from model.config import preset
from model.modules.bitnet import (
    BitLinear,
    PackedTernary,
    effective_weight,
    make_linear,
    pack_ternary,
    quantize_activations,
    ternarize,
    unpack_ternary,
)
from model.modules.norm import rms_norm


def random_layer(in_features=37, out_features=11, bias=False, seed=0, **kwargs) -> BitLinear:
    torch.manual_seed(seed)
    layer = BitLinear(in_features, out_features, bias=bias, **kwargs)
    with torch.no_grad():
        layer.weight.normal_()
        if bias:
            layer.bias.normal_()
    return layer


# ---- the quantizers --------------------------------------------------------------------------------------
def test_ternarize_is_absmean_rounding():
    torch.manual_seed(0)
    w = torch.randn(16, 24) * 0.3
    values, scale = ternarize(w, eps=1e-5)
    assert torch.isclose(scale, w.abs().mean())
    assert set(values.unique().tolist()) <= {-1.0, 0.0, 1.0}
    # round(w / s) clamped: |w| < s/2 -> 0, otherwise the sign
    expected = torch.where(w.abs() < scale / 2, torch.zeros_like(w), w.sign())
    assert torch.equal(values, expected)


def test_activation_quantization_is_per_token_absmax_int8():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 40) * torch.tensor([0.01, 1.0, 100.0]).view(3, 1, 1)
    q = quantize_activations(x, eps=1e-5)
    step = x.abs().amax(-1, keepdim=True) / 127
    codes = q / step
    assert torch.allclose(codes, codes.round(), atol=1e-3)  # every value sits on its token's int8 grid
    assert codes.abs().max() <= 127 + 1e-3
    assert ((q - x).abs() <= step / 2 + 1e-6).all()
    assert torch.allclose(q.abs().amax(-1), x.abs().amax(-1))  # the largest value is exact


def test_straight_through_gradients_are_the_identity():
    layer = random_layer(input_norm=False)
    x = torch.randn(4, 37, requires_grad=True)
    upstream = torch.randn(4, 11)
    (layer(x) * upstream).sum().backward()
    x_q = quantize_activations(x.detach(), layer.eps)
    values, scale = ternarize(layer.weight.detach(), layer.eps)
    # d/dW of upstream . (x_q W_q^T) with dW_q/dW = 1, and d/dx with dx_q/dx = 1
    torch.testing.assert_close(layer.weight.grad, upstream.T @ x_q)
    torch.testing.assert_close(x.grad, upstream @ (values * scale))


def test_bitlinear_training_path_formula():
    """Quantize, then RMSNorm over the dequantized input (one factor per token), then the ternary matmul."""
    layer = random_layer(bias=True)
    x = torch.randn(2, 3, 37) * 4
    values, scale = ternarize(layer.weight.detach(), layer.eps)
    x_q = quantize_activations(x, layer.eps)
    expected = F.linear(rms_norm(x_q, layer.eps), values * scale, layer.bias)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)


def test_the_folded_input_norm_is_rmsnorm_up_to_the_int8_rounding():
    """Normalizing the dequantized input instead of the input moves each token's scale by far less than the
    8-bit quantization itself moves its values, and the output keeps RMSNorm's scale invariance."""
    layer = random_layer(in_features=384, out_features=64)
    x = torch.randn(5, 384) * 3
    values, scale = ternarize(layer.weight.detach(), layer.eps)
    norm_then_quantize = F.linear(quantize_activations(rms_norm(x, layer.eps), layer.eps), values * scale)
    with torch.no_grad():
        got = layer(x)
        assert torch.allclose(layer(x * 1000), got, rtol=1e-5, atol=1e-5)
    relative = (got - norm_then_quantize).norm(dim=-1) / norm_then_quantize.norm(dim=-1)
    assert relative.max() < 2e-3


def test_gradients_flow_through_the_input_norm():
    """The straight-through gradient with an input norm: that of RMSNorm(x)_q @ W_q^T, through the norm."""
    layer = random_layer(in_features=24, out_features=8)
    x = torch.randn(3, 24, requires_grad=True)
    upstream = torch.randn(3, 8)
    (layer(x) * upstream).sum().backward()
    values, scale = ternarize(layer.weight.detach(), layer.eps)
    reference_x = x.detach().clone().requires_grad_()
    normed = rms_norm(reference_x, layer.eps)
    (F.linear(normed, values * scale) * upstream).sum().backward()
    torch.testing.assert_close(x.grad, reference_x.grad)
    expected_weight_grad = upstream.T @ quantize_activations(normed.detach(), layer.eps)
    torch.testing.assert_close(layer.weight.grad, expected_weight_grad)


# ---- against transformers --------------------------------------------------------------------------------
def reference_layer(layer: BitLinear, use_rms_norm: bool) -> AutoBitLinear:
    reference = AutoBitLinear(
        layer.in_features,
        layer.out_features,
        bias=False,
        online_quant=True,
        use_rms_norm=use_rms_norm,
        rms_norm_eps=layer.eps,
    )
    with torch.no_grad():
        reference.weight.copy_(layer.weight)
    return reference


@pytest.mark.parametrize("input_norm", [False, True])
def test_matches_transformers_autobitlinear(input_norm):
    """Same weights, same output. Conventions that differ, and how the test lines them up:
    - AutoBitLinear's optional input norm is LlamaRMSNorm with a learned scale; ours has no scale. Its scale
      is initialised to ones, which is our formula, so the comparison uses it untouched.
    - AutoBitLinear quantizes with reciprocal scales (x * (1/s)); we divide. That moves results by an ulp.
    - We take the input norm's mean square over the dequantized input (it folds into the output scale); it
      normalizes the input itself. That moves each token's output by a factor within about 1e-3 of one.
    transformers jit-compiles its quantizers; eager mode runs the same code without a C compiler."""
    layer = random_layer(in_features=64, out_features=48, input_norm=input_norm)
    reference = reference_layer(layer, use_rms_norm=input_norm)
    x = torch.randn(3, 7, 64) * 3
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):
        expected = reference(x)
        got = layer(x)
    if input_norm:
        ratio = (got * expected).sum(-1) / expected.square().sum(-1)  # the per-token factor got / expected
        assert ((ratio - 1).abs() < 2e-3).all()
        assert (got - ratio.unsqueeze(-1) * expected).abs().max() <= 2e-4
    else:
        assert (got - expected).abs().max() <= 1e-5


def test_autobitlinear_gradients_match():
    layer = random_layer(in_features=32, out_features=16, input_norm=False)
    reference = reference_layer(layer, use_rms_norm=False)
    x = torch.randn(5, 32)
    upstream = torch.randn(5, 16)
    with torch.compiler.set_stance("force_eager"):
        (reference(x) * upstream).sum().backward()
    (layer(x) * upstream).sum().backward()
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad, atol=1e-5, rtol=1e-5)


# ---- packing ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(5, 4), (7, 13), (3, 1), (16, 64)])
def test_pack_round_trips_exactly(shape):
    torch.manual_seed(1)
    values = torch.randint(-1, 2, shape).float()
    packed = pack_ternary(values)
    assert packed.dtype == torch.uint8
    assert packed.shape == (shape[0], (shape[1] + 3) // 4)  # four values per byte
    unpacked = unpack_ternary(packed, shape[1])
    assert unpacked.dtype == torch.int8
    assert torch.equal(unpacked.float(), values)


def test_packed_bytes_layout():
    """Codes are value + 1, the first input in the lowest two bits; padding is the code of 0."""
    packed = pack_ternary(torch.tensor([[-1.0, 0.0, 1.0, 1.0, 0.0]]))
    assert packed.tolist() == [[0b10_10_01_00, 0b01_01_01_01]]


def test_pack_refuses_non_ternary_values():
    with pytest.raises(ValueError, match=r"\{-1, 0, \+1\}"):
        pack_ternary(torch.tensor([[0.0, 2.0]]))
    with pytest.raises(ValueError, match=r"\{-1, 0, \+1\}"):
        pack_ternary(torch.tensor([[0.5, 1.0]]))


def test_unpack_refuses_bad_codes_and_shapes():
    with pytest.raises(ValueError, match="code 3"):
        unpack_ternary(torch.tensor([[0b11]], dtype=torch.uint8), 1)
    with pytest.raises(ValueError, match="bytes per row"):
        unpack_ternary(torch.zeros(2, 3, dtype=torch.uint8), 20)
    with pytest.raises(ValueError, match="uint8"):
        unpack_ternary(torch.zeros(2, 3), 12)


# ---- the serving form ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"bias": True},
        {"in_features": 64, "out_features": 30},
        {"input_norm": False, "quantize_activations": False},
    ],
)
def test_packed_layer_equals_the_training_fake_quant(kwargs):
    layer = random_layer(**kwargs)
    packed = layer.pack()
    assert set(unpack_ternary(packed.data, layer.in_features).unique().tolist()) <= {-1, 0, 1}
    serving = BitLinear.from_packed(
        packed,
        bias=layer.bias.detach() if layer.bias is not None else None,
        eps=layer.eps,
        input_norm=layer.input_norm,
        quantize_activations=layer.quantize_activations,
    )
    assert serving.is_packed and not serving.weight.requires_grad
    x = torch.randn(4, 9, layer.in_features) * 2
    with torch.no_grad():
        assert (serving(x) - layer(x)).abs().max() <= 1e-5
    repacked = serving.pack()
    assert torch.equal(repacked.data, packed.data) and torch.equal(repacked.scale, packed.scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "kwargs", [{}, {"bias": True}, {"input_norm": False}, {"quantize_activations": False}]
)
def test_serving_form_is_bit_identical_to_the_fake_quant(dtype, kwargs):
    """The serving form quantizes its input in fewer ops; the values must not move by even one rounding."""
    layer = random_layer(in_features=96, out_features=40, **kwargs).to(dtype)
    serving = BitLinear.from_packed(
        layer.pack(),
        bias=layer.bias.detach() if layer.bias is not None else None,
        eps=layer.eps,
        input_norm=layer.input_norm,
        quantize_activations=layer.quantize_activations,
    ).to(dtype)
    generator = torch.Generator().manual_seed(1)
    for scale in (1e-4, 1.0, 3e3):
        x = (torch.randn(3, 5, 96, generator=generator) * scale).to(dtype)
        x[0, 0] = 0.0  # an all-zero token: the absmax is clamped to eps
        with torch.no_grad():
            assert torch.equal(serving(x), layer(x))


def test_load_packed_refuses_a_weight_of_another_shape():
    layer = random_layer(in_features=8, out_features=4)
    other = random_layer(in_features=12, out_features=4).pack()
    with pytest.raises(ValueError, match="12->4"):
        layer.load_packed(other)
    bad_scale = PackedTernary(layer.pack().data, torch.tensor(-1.0), 8)
    with pytest.raises(ValueError, match="scale"):
        layer.load_packed(bad_scale)


def test_make_linear_follows_the_config():
    config = preset("tiny")
    assert isinstance(make_linear(config, 8, 4), BitLinear)
    plain = make_linear(config.with_overrides(**{"bitnet.enabled": False}), 8, 4)
    assert type(plain) is nn.Linear
    no_act = make_linear(config.with_overrides(**{"bitnet.quantize_activations": False}), 8, 4)
    assert isinstance(no_act, BitLinear) and not no_act.quantize_activations
    layer = random_layer()
    values, scale = ternarize(layer.weight.detach(), layer.eps)
    assert torch.equal(effective_weight(layer).detach(), values * scale)
    assert effective_weight(plain) is plain.weight
