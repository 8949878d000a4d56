"""The C decode kernel of BitLinear: the same numbers bit for bit as the torch path, in every build."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.modules import cpu_kernels
from model.modules.bitnet import BitLinear, ternary_product

ROOT = Path(__file__).resolve().parents[2]
COMMON = ("-ffp-contract=off", "-shared", "-fPIC")
# The build for this CPU, then the portable paths of the source: AVX2 without AVX-512, and plain C.
BUILDS = {"native": tuple(cpu_kernels.FLAGS), "plain C": ("-O2", *COMMON)}
if platform.machine() in ("x86_64", "AMD64"):
    BUILDS["AVX2"] = ("-O3", "-mavx2", "-mno-avx512f", *COMMON)
    BUILDS["plain C"] = ("-O2", "-mno-avx", "-mno-avx2", *COMMON)


def ternary_values(out_features: int, in_features: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 2, (out_features, in_features), generator=generator).float()


def test_the_kernel_builds_on_this_machine() -> None:
    assert cpu_kernels.enabled(), "no C compiler found (cc or $CC): the decode kernel could not be built"


@pytest.mark.parametrize("build", sorted(BUILDS))
@pytest.mark.parametrize(("in_features", "out_features"), [(37, 11), (128, 64), (384, 1024), (1000, 7)])
@pytest.mark.parametrize("normalize", [False, True])
def test_kernel_equals_the_torch_path_bit_for_bit(
    build: str, in_features: int, out_features: int, normalize: bool
) -> None:
    lib = cpu_kernels.build(BUILDS[build])
    assert lib is not None
    values = ternary_values(out_features, in_features, seed=in_features)
    scale = torch.tensor(0.0371, dtype=torch.float32)
    bias = torch.randn(out_features, generator=torch.Generator().manual_seed(3))
    blocks = cpu_kernels.pack_blocks(values)
    generator = torch.Generator().manual_seed(out_features)
    for rows in (1, 2, 3, 4, 5, 9, 16, 17, 64):
        for magnitude in (1e-4, 1.0, 3e3):
            x = torch.randn(rows, in_features, generator=generator) * magnitude
            x[0] = 0.0 if rows > 2 else x[0]  # an all-zero token: the absmax is clamped to eps
            expected = ternary_product(x, values, scale, True, 1e-5, normalize)
            got = cpu_kernels.ternary_linear(
                x, blocks, out_features, float(scale), None, 1e-5, normalize, lib
            )
            assert torch.equal(got, expected), (build, rows, magnitude)
            with_bias = cpu_kernels.ternary_linear(
                x, blocks, out_features, float(scale), bias, 1e-5, normalize, lib
            )
            assert torch.equal(with_bias, expected + bias)


def test_a_large_product_uses_torchs_threads_and_gives_the_same_numbers() -> None:
    """The kernel shares torch's OpenMP pool (torch.set_num_threads applies to it), and splitting the outputs
    over threads leaves every sum as it was."""
    lib = cpu_kernels.library()
    assert lib is not None
    values = ternary_values(1024, 384, seed=5)
    blocks = cpu_kernels.pack_blocks(values)
    x = torch.randn(16, 384, generator=torch.Generator().manual_seed(6))
    threads = torch.get_num_threads()
    results = {}
    try:
        for n_threads in (1, 2, 3):
            torch.set_num_threads(n_threads)
            assert lib.nanoprime_kernel_threads() == n_threads
            results[n_threads] = cpu_kernels.ternary_linear(x, blocks, 1024, 0.05, None, 1e-5, True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[1], results[2]) and torch.equal(results[1], results[3])
    assert torch.equal(results[1], ternary_product(x, values, torch.tensor(0.05), True, 1e-5, True))


def test_a_packed_layer_uses_the_kernel_for_decoding_and_for_long_inputs_only_on_few_threads() -> None:
    torch.manual_seed(0)
    trained = BitLinear(384, 200, bias=True)
    served = BitLinear.from_packed(trained.pack(), bias=trained.bias.detach())
    assert served._kernel_blocks is not None
    calls = []
    original = cpu_kernels.ternary_linear

    def counting(*args, **kwargs):  # the real kernel, counted
        calls.append(args[0].shape[0])
        return original(*args, **kwargs)

    threads = torch.get_num_threads()
    cpu_kernels.ternary_linear = counting
    try:
        for n_threads in (cpu_kernels.ALL_ROWS_THREADS + 2, 1):
            torch.set_num_threads(n_threads)
            calls.clear()
            with torch.no_grad():
                for rows in (1, 3, cpu_kernels.MAX_ROWS, cpu_kernels.MAX_ROWS + 1, 500):
                    x = torch.randn(rows, 1, 384) * 5
                    assert torch.equal(served(x), trained(x))
            if n_threads > cpu_kernels.ALL_ROWS_THREADS:  # long inputs went to torch's matmul
                assert calls == [1, 3, cpu_kernels.MAX_ROWS]
            else:
                assert calls == [1, 3, cpu_kernels.MAX_ROWS, cpu_kernels.MAX_ROWS + 1, 500]
    finally:
        cpu_kernels.ternary_linear = original
        torch.set_num_threads(threads)


def test_without_a_compiler_the_model_runs_on_the_torch_path(tmp_path: Path) -> None:
    script = (
        "import torch\n"
        "from model.modules import cpu_kernels\n"
        "from model.modules.bitnet import BitLinear\n"
        "layer = BitLinear(64, 8)\n"
        "served = BitLinear.from_packed(layer.pack())\n"
        "x = torch.randn(2, 64)\n"
        "with torch.no_grad():\n"
        "    same = torch.equal(served(x), layer(x))\n"
        "print(cpu_kernels.enabled(), served._kernel_blocks is None, same)\n"
    )
    env = os.environ | {"CC": "/bin/false", "NANOPRIME_KERNEL_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "True"]
    assert "building the CPU kernels with" in result.stderr
    assert "no CPU kernels could be built" in result.stderr
    assert list(tmp_path.glob("*.so")) == []

    env = os.environ | {"NANOPRIME_KERNEL": "0"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.split() == ["False", "True", "True"]
