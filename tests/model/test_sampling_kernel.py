"""Sampling's C kernel (sampling.c): the token whose share of the softmax a draw falls in, in every build;
-inf logits never taken; a row the same alone or in a batch; sample_tokens taking it for temperature alone."""

from __future__ import annotations

import pytest
import torch

from model.generation import SamplingParams, sample_tokens
from model.modules import cpu_kernels
from tests.model.test_ternary_kernel import BUILDS


def midpoint_draws(logits: torch.Tensor, temperature: float, tokens: int) -> tuple[torch.Tensor, list[int]]:
    """Draws at the middle of `tokens` tokens' intervals of the cumulative softmax (fp64), and those tokens:
    the kernel must pick exactly them. Tokens with a share under 1e-4 are left out: their interval is too
    narrow to stay clear of float32 rounding."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    cdf = probs.cumsum(-1)
    wide = (probs > 1e-4).nonzero()[:, 0]
    chosen = wide[torch.randperm(len(wide), generator=torch.Generator().manual_seed(0))[:tokens]]
    draws = (cdf[chosen] - probs[chosen] / 2) / cdf[-1]
    return draws.float(), chosen.tolist()


@pytest.mark.parametrize("build", sorted(BUILDS))
@pytest.mark.parametrize(("vocab", "temperature"), [(8192, 0.7), (1000, 1.0), (333, 2.5), (40, 1.5)])
def test_a_draw_takes_the_token_whose_interval_it_falls_in(
    build: str, vocab: int, temperature: float
) -> None:
    lib = cpu_kernels.build(BUILDS[build])
    assert lib is not None
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(vocab)) * 3
    draws, expected = midpoint_draws(logits, temperature, tokens=64)
    rows = logits.expand(len(draws), vocab).contiguous()
    got = cpu_kernels.sample(rows, torch.full((len(draws),), temperature), draws, lib=lib)
    assert got == expected
    assert len(set(expected)) > 10  # the draws cover many tokens, from several blocks


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_minus_infinity_is_never_taken_even_by_the_last_draw(build: str) -> None:
    lib = cpu_kernels.build(BUILDS[build])
    assert lib is not None
    logits = torch.randn(2, 700, generator=torch.Generator().manual_seed(1))
    logits[0, 600:] = float("-inf")  # the end of the vocabulary banned
    logits[1, ::2] = float("-inf")  # every other token banned
    for draw in (0.0, 0.5, 1 - 2**-24):  # torch.rand's smallest and largest values
        draws = torch.full((2,), draw)
        first, second = cpu_kernels.sample(logits, torch.ones(2), draws, lib=lib)
        assert first < 600
        assert second % 2 == 1


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_a_row_gets_the_same_token_alone_or_in_a_batch(build: str) -> None:
    """Four rows or more split over threads; each row is still one thread's."""
    lib = cpu_kernels.build(BUILDS[build])
    assert lib is not None
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(9, 8192, generator=generator) * 4
    temperatures = torch.rand(9, generator=generator) + 0.2
    draws = torch.rand(9, generator=generator)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        together = cpu_kernels.sample(logits, temperatures, draws, lib=lib)
        torch.set_num_threads(1)
        alone = [
            cpu_kernels.sample(logits[i : i + 1], temperatures[i : i + 1], draws[i : i + 1], lib=lib)[0]
            for i in range(9)
        ]
    finally:
        torch.set_num_threads(threads)
    assert together == alone


def test_sample_tokens_takes_the_kernel_for_temperature_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows with temperature alone go to the kernel, filtered rows to the torch path; the frequencies of a
    long run through the kernel follow the softmax."""
    if not cpu_kernels.enabled():
        pytest.fail("the CPU kernels could not be built here")
    calls: list[int] = []
    original = cpu_kernels.sample
    monkeypatch.setattr(
        cpu_kernels, "sample", lambda logits, *a, **k: calls.append(len(logits)) or original(logits, *a, **k)
    )
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf")]])
    plain = [SamplingParams(temperature=1.0, seed=7)]
    generator = plain[0].make_generator()
    draws = torch.tensor([sample_tokens(logits, plain, [generator])[0] for _ in range(20000)])
    assert calls == [1] * 20000
    frequencies = torch.bincount(draws, minlength=5).float() / len(draws)
    torch.testing.assert_close(frequencies, torch.softmax(logits[0], -1), atol=0.01, rtol=0)

    nucleus = [SamplingParams(temperature=1.0, top_p=0.9, seed=0)]
    sample_tokens(logits, nucleus, [nucleus[0].make_generator()])
    assert len(calls) == 20000  # top-p: the torch path
