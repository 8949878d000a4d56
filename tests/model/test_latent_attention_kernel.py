"""MLA's C decoding step (latent_attention.c): against the attention formula in fp64, in every build; the
cache it writes bit for bit as the torch path writes it; the same numbers for a row alone or in a batch."""

from __future__ import annotations

import ctypes

import pytest
import torch

from model.config import preset
from model.modules import cpu_kernels
from model.modules.mla import MLA
from model.modules.rope import RotaryEmbedding, apply_rope
from tests.model.helpers import count_kernel_calls
from tests.model.test_ternary_kernel import BUILDS, COMMON

# With AVX512-BF16 the native build multiplies bf16 pairs (queries and softmax weights rounded to bf16); the
# same source without it takes the fp32 AVX-512 path, which gets a build of its own where the CPU has both.
BF16_PRODUCTS = "avx512_bf16" in cpu_kernels._cpu_flags().split()
LATENT_BUILDS = dict(BUILDS)
if BF16_PRODUCTS:
    LATENT_BUILDS["AVX-512 without BF16"] = ("-O3", "-march=native", "-mno-avx512bf16", *COMMON)
# Against fp64: fp32 sums agree to float rounding. Rounding the queries and weights to bf16 (relative error
# 2^-9 each) moves the scores by ~1e-3 of their size, and the outputs by ~2e-3 of theirs (RMS), ~1e-2 at most.
FP32_TOLERANCE = {"rtol": 2e-5, "atol": 2e-5}
BF16_TOLERANCE = {"rtol": 2e-2, "atol": 2e-2}
BF16_RMS_ERROR = 4e-3

SHAPES = {  # heads, nope, v, latent, rope: pocket's, and one the vector paths cannot take
    "pocket": (6, 64, 64, 64, 16),
    "odd": (3, 10, 7, 24, 6),
}


def random_step(shape: tuple[int, ...], positions: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    heads, nope, v_dim, latent, rope = shape
    generator = torch.Generator().manual_seed(seed)
    batch, capacity = len(positions), max(positions) + 1

    def randn(*size: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*size, generator=generator) * std

    w_kv_b = randn(heads, nope + v_dim, latent, std=latent**-0.5)
    return {
        "q": randn(batch, heads, nope + rope, std=2.0),
        "latent_new": randn(batch, latent),
        "k_rope_new": randn(batch, rope),
        "positions": torch.tensor(positions),
        "cache_latent": randn(batch, capacity, latent).bfloat16(),  # MLACache's dtype for an fp32 model
        "cache_k_rope": randn(batch, capacity, rope).bfloat16(),
        "w_kv_b": w_kv_b,
        "w_uv_t": w_kv_b[:, nope:].transpose(1, 2).contiguous(),
    }


def run_kernel(
    step: dict[str, torch.Tensor], rotary: RotaryEmbedding, scale: float, lib: ctypes.CDLL | None = None
) -> torch.Tensor:
    return cpu_kernels.latent_attention(
        step["q"],
        step["latent_new"],
        step["k_rope_new"],
        rotary.cos_table,
        rotary.sin_table,
        step["positions"],
        step["cache_latent"],
        step["cache_k_rope"],
        step["w_kv_b"],
        step["w_uv_t"],
        scale,
        lib,
    )


def reference(
    step: dict[str, torch.Tensor], rotary: RotaryEmbedding, scale: float, nope: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The absorbed attention written out per row in fp64, and the bf16 caches after the write (torch's rope,
    torch's rounding to bf16)."""
    cache_latent, cache_k_rope = step["cache_latent"].clone(), step["cache_k_rope"].clone()
    w = step["w_kv_b"].double()
    outputs = []
    for row, position in enumerate(step["positions"].tolist()):
        cos, sin = rotary.cos_table[position], rotary.sin_table[position]
        cache_latent[row, position] = step["latent_new"][row]
        cache_k_rope[row, position] = apply_rope(step["k_rope_new"][row], cos, sin)
        q = step["q"][row]
        q_rope = apply_rope(q[:, nope:], cos, sin).double()
        q_latent = torch.einsum("hn,hnc->hc", q[:, :nope].double(), w[:, :nope])
        keys = cache_latent[row, : position + 1].double()
        scores = scale * (q_latent @ keys.T + q_rope @ cache_k_rope[row, : position + 1].double().T)
        latent_out = torch.softmax(scores, dim=-1) @ keys
        outputs.append(torch.einsum("hc,hvc->hv", latent_out, w[:, nope:]).reshape(-1))
    return torch.stack(outputs), cache_latent, cache_k_rope


@pytest.mark.parametrize("build", sorted(LATENT_BUILDS))
@pytest.mark.parametrize("shape_name", sorted(SHAPES))
def test_kernel_matches_the_attention_formula(build: str, shape_name: str) -> None:
    """Rows at the edges of the kernel's 64-key blocks, one long enough to split over two threads. Pocket's
    shape takes the bf16 products where the build has them; the odd one, the fp32 path of every build."""
    lib = cpu_kernels.build(LATENT_BUILDS[build])
    assert lib is not None
    shape = SHAPES[shape_name]
    rotary = RotaryEmbedding(shape[4], 4096)
    step = random_step(shape, [0, 1, 63, 64, 65, 300, 2500], seed=len(build))
    expected, cache_latent, cache_k_rope = reference(step, rotary, 0.125, shape[1])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = run_kernel(step, rotary, 0.125, lib)
    finally:
        torch.set_num_threads(threads)
    assert got.shape == expected.shape
    bf16 = BF16_PRODUCTS and build == "native" and shape_name == "pocket"
    torch.testing.assert_close(got.double(), expected, **(BF16_TOLERANCE if bf16 else FP32_TOLERANCE))
    if bf16:  # the rounding's error spread over every output, not only bounded
        assert (got.double() - expected).norm() <= BF16_RMS_ERROR * expected.norm()
    assert torch.equal(step["cache_latent"], cache_latent), "the new latent went to the wrong slot"
    assert torch.equal(step["cache_k_rope"], cache_k_rope), "the rotated key differs from torch's rope"


@pytest.mark.parametrize("build", sorted(LATENT_BUILDS))
def test_the_cache_write_rounds_to_bf16_as_torch_does(build: str) -> None:
    """Ties to even, subnormals, overflow, signed zero, infinities and NaN: the kernel's rounding stores the
    bits that torch's .to(bfloat16) stores."""
    lib = cpu_kernels.build(LATENT_BUILDS[build])
    assert lib is not None
    tiny = 2.0**-133  # the smallest bf16 subnormal
    edges = [0.0, -0.0, 1e-39, -1e-39, tiny / 2, tiny / 2 * (1 + 2**-20), tiny, 1.5 * tiny, 2.5 * tiny]
    edges += [
        2.0**-126,
        1 + 2**-8,
        1 + 3 * 2**-8,
        -(1 + 2**-8),
        1 + 2**-8 + 2**-20,
        3.3895e38,
        3.4e38,
        -3.4e38,
    ]
    edges += [float("inf"), float("-inf"), float("nan"), 3.14159265, -2.7182818]
    generator = torch.Generator().manual_seed(9)
    magnitudes = torch.exp(torch.empty(64 - len(edges)).uniform_(-80.0, 80.0, generator=generator))
    values = torch.cat(
        [torch.tensor(edges), magnitudes * torch.randn(magnitudes.shape, generator=generator).sign()]
    )
    shape = SHAPES["pocket"]
    rotary = RotaryEmbedding(shape[4], 64)
    step = random_step(shape, [10])
    step["latent_new"] = values[None, :].contiguous()
    run_kernel(step, rotary, 0.125, lib)
    written = step["cache_latent"][0, 10]
    assert torch.equal(written.view(torch.int16), values.bfloat16().view(torch.int16))


def test_a_row_gets_the_same_numbers_alone_or_in_a_batch() -> None:
    """The engine batches sequences of any lengths: a sequence's tokens must not depend on its neighbours."""
    shape = SHAPES["pocket"]
    rotary = RotaryEmbedding(shape[4], 4096)
    positions = [5, 2500, 130]
    batch = random_step(shape, positions)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        together = run_kernel({key: value.clone() for key, value in batch.items()}, rotary, 0.1)
        for row in range(len(positions)):
            alone = {
                key: value if key.startswith("w_") else value[row : row + 1].clone()
                for key, value in batch.items()
            }
            assert torch.equal(run_kernel(alone, rotary, 0.1)[0], together[row]), row
    finally:
        torch.set_num_threads(threads)


def test_the_split_over_threads_agrees_with_one_thread() -> None:
    shape = SHAPES["pocket"]
    rotary = RotaryEmbedding(shape[4], 4096)
    step = random_step(shape, [3000, 2100])
    results = {}
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 3):
            torch.set_num_threads(n_threads)
            results[n_threads] = run_kernel({key: value.clone() for key, value in step.items()}, rotary, 0.1)
    finally:
        torch.set_num_threads(threads)
    # Each part has its own running maximum, so with bf16 products its weights round at other scales.
    tolerance = {"rtol": 1e-2, "atol": 2e-3} if BF16_PRODUCTS else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(results[3], results[1], **tolerance)


def test_mla_decodes_through_the_kernel_as_the_torch_path_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pocket-shaped layer: prefill, then decoding steps of a right-padded batch, kernel on and off."""
    torch.manual_seed(0)
    layer = MLA(preset("pocket").with_overrides(**{"bitnet.enabled": False})).eval()
    with torch.no_grad():
        for param in layer.parameters():
            if param.dim() == 2:
                param.normal_(std=param.shape[1] ** -0.5)
    prompt = torch.randn(2, 70, layer.kv_a.in_features)
    steps = torch.randn(2, 6, layer.kv_a.in_features)
    calls = count_kernel_calls(monkeypatch, "latent_attention")
    results = {}
    for switch in ("0", "1"):
        monkeypatch.setenv("NANOPRIME_KERNEL", switch)
        cache = layer.new_cache(2, "cpu", torch.float32)
        lengths = torch.tensor([70, 41])
        with torch.no_grad():
            layer(prompt, cache, torch.zeros(2, dtype=torch.long), lengths)
            outputs = []
            for t in range(steps.shape[1]):
                outputs.append(layer(steps[:, t : t + 1], cache, lengths + t))
        results[switch] = torch.cat(outputs, dim=1), cache
    assert len(calls) == steps.shape[1], "decoding did not go through the kernel"
    kernel, torch_path = results["1"][0], results["0"][0]
    torch.testing.assert_close(
        kernel, torch_path, **(BF16_TOLERANCE if BF16_PRODUCTS else {"rtol": 1e-5, "atol": 1e-5})
    )
    if BF16_PRODUCTS:
        assert (kernel - torch_path).norm() <= BF16_RMS_ERROR * torch_path.norm()
    for field in ("latent", "k_rope"):
        assert torch.equal(getattr(results["1"][1], field), getattr(results["0"][1], field))
