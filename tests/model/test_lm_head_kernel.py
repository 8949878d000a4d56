"""The LM head's C kernel (lm_head.c): torch's product to float rounding in every build, the same numbers for
a row alone or among others and on any thread count, and the model taking it only where it should."""

from __future__ import annotations

import pytest
import torch

from model.config import preset
from model.modules import cpu_kernels
from model.nanoprime import NanoPrime
from tests.model.test_ternary_kernel import BUILDS


def matrices(rows: int, width: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=generator)
    weight = torch.randn(vocab, width, generator=generator) * width**-0.5
    return x, weight


@pytest.mark.parametrize("build", sorted(BUILDS))
@pytest.mark.parametrize(
    ("rows", "width", "vocab"),
    # pocket's width; 16 rows (whole groups of 4), 7 (groups and single rows), one; a vocabulary that ends in
    # a part tile; a width the vector path cannot take
    [(1, 384, 2048), (7, 384, 1000), (16, 384, 2048), (5, 70, 333)],
)
def test_kernel_matches_the_product(build: str, rows: int, width: int, vocab: int) -> None:
    lib = cpu_kernels.build(BUILDS[build])
    assert lib is not None
    x, weight = matrices(rows, width, vocab, seed=rows + width)
    got = cpu_kernels.lm_head(x, weight, lib=lib)
    expected = x.double() @ weight.double().T
    assert got.shape == (rows, vocab)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("build", sorted(BUILDS))
def test_a_row_gets_the_same_logits_alone_or_among_others_on_any_thread_count(build: str) -> None:
    lib = cpu_kernels.build(BUILDS[build])
    assert lib is not None
    x, weight = matrices(11, 384, 1000, seed=5)  # 11 rows: two groups of 4, then three single rows
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        batch = cpu_kernels.lm_head(x, weight, lib=lib)
        torch.set_num_threads(1)
        alone = [cpu_kernels.lm_head(x[i : i + 1], weight, lib=lib) for i in range(len(x))]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(batch, torch.cat(alone))


def test_the_model_decodes_through_the_kernel_else_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding (one row per sequence, no autograd) takes the kernel and agrees with torch's head; a forward
    with autograd, and one with more rows than HEAD_MAX_ROWS, take torch's."""
    if not cpu_kernels.enabled():
        pytest.fail("the CPU kernels could not be built here")
    torch.manual_seed(0)
    model = NanoPrime(preset("tiny")).eval()
    calls: list[int] = []
    kernel = cpu_kernels.lm_head

    def counted(x: torch.Tensor, weight: torch.Tensor, lib: object = None) -> torch.Tensor:
        calls.append(x.numel() // x.shape[-1])
        return kernel(x, weight)

    monkeypatch.setattr(cpu_kernels, "lm_head", counted)
    ids = torch.randint(0, model.config.vocab_size, (3, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        state = model.new_state(batch_size=3)
        _, state = model(ids, state)
        step, _ = model(ids[:, :1], state)
        assert calls == [15, 3], "the prefill's 15 rows and the step's 3 should take the kernel"
        hidden = model.norm(model.embed(ids[:, :1]))
        torch.testing.assert_close(model._logits(hidden), model.head(hidden), rtol=1e-5, atol=1e-5)
        calls.clear()
        model(torch.zeros(2, cpu_kernels.HEAD_MAX_ROWS, dtype=torch.long))
        assert calls == [], f"{2 * cpu_kernels.HEAD_MAX_ROWS} rows should take torch's matmul"
    logits, _ = model(ids)
    assert calls == [] and logits.requires_grad, "a forward with autograd should take torch's head"


def test_rows_of_the_wrong_width_are_refused() -> None:
    """The kernel reads rows by the matrix's width: a mismatch must fail, not read past the tensor."""
    with pytest.raises(ValueError, match="rows of 70 values for a matrix of width 384"):
        cpu_kernels.lm_head(torch.randn(2, 70), torch.randn(100, 384))
