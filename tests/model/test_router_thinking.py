"""The experimental fast/slow router and thinking loop: off by default; when on they train and decode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.config import preset
from model.modules.router import Router
from model.modules.thinking_loop import ThinkingLoop
from tests.model.helpers import max_diff, run_in_pieces, tiny_model

TOL = 5e-3  # the states cache MLA latents in bf16 (8 significant bits): logits move by up to ~1.5e-3
EXACT = {"bitnet.quantize_activations": False}  # see test_nanoprime.py's docstring
VARIANTS = {
    "router": {"router.enabled": True},
    "thinking": {"thinking_loop.enabled": True, "thinking_loop.max_iterations": 3},
    "both": {"router.enabled": True, "thinking_loop.enabled": True, "thinking_loop.max_iterations": 2},
}


def test_off_by_default():
    config = preset("tiny")
    assert not config.router.enabled and not config.thinking_loop.enabled
    model = tiny_model()
    assert not any(isinstance(m, Router | ThinkingLoop) for m in model.modules())


@pytest.mark.parametrize("variant", VARIANTS)
def test_decoding_equals_the_full_forward(variant):
    model = tiny_model(**VARIANTS[variant], **EXACT)
    ids = torch.randint(0, 320, (2, 27), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids)[0]
    got, _ = run_in_pieces(model, ids, [11] + [1] * 16)
    assert max_diff(full, got) <= TOL


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_reach_the_router_and_the_loop(variant):
    model = tiny_model(**VARIANTS[variant]).train()
    ids = torch.randint(0, 320, (2, 20), generator=torch.Generator().manual_seed(1))
    logits, _ = model(ids[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_few_training_steps_lower_the_loss(variant):
    model = tiny_model(**VARIANTS[variant]).train()
    ids = torch.randint(0, 320, (2, 17), generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        logits, _ = model(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.8 * losses[0]


def test_router_gate_is_a_tempered_softmax_over_fast_and_slow_paths():
    config = preset("tiny").with_overrides(**{"router.enabled": True, "router.temperature": 2.0})
    torch.manual_seed(0)
    router = Router(config)
    assert len(router.paths) == 2
    assert router.paths[0].hidden < router.paths[1].hidden == config.ffn_hidden  # fast path is the light one
    x = torch.randn(3, 5, 64)
    assert torch.allclose(
        router.gate_probs(x), torch.full((3, 5, 2), 0.5)
    )  # zero-initialised gate: even split
    with torch.no_grad():
        router.gate.weight.normal_()
    logits = router.gate(x)
    torch.testing.assert_close(router.gate_probs(x), torch.softmax(logits / 2.0, dim=-1))
    probs = router.gate_probs(x)
    expected = probs[..., :1] * router.paths[0](x) + probs[..., 1:] * router.paths[1](x)
    torch.testing.assert_close(router(x), expected)


def test_thinking_loop_weights_are_act_halting():
    """The output is a convex combination of the iterates, weighted by ACT halting."""
    loop_settings = {"thinking_loop.max_iterations": 3, "thinking_loop.halt_threshold": 0.5}
    model = tiny_model(**{"thinking_loop.enabled": True, **loop_settings})
    loop = model.layers[-1]
    assert isinstance(loop, ThinkingLoop) and loop.n_caches == 3
    assert len(model.new_state(1).caches) == 3 + 3  # three plain blocks + one cache per loop iteration
    x = torch.randn(2, 6, 64)
    with torch.no_grad():
        iterates, p = [], []
        h = x
        for _ in range(3):
            h = loop.block(h)
            iterates.append(h)
            p.append(torch.sigmoid(loop.halt(F.rms_norm(h, (64,), eps=loop.eps)).squeeze(-1)))
        # threshold 0.5 and p ~ 0.27 at init: most tokens take p1, p2 and the remainder at step 3, but where
        # p1 + p2 >= 0.5 the token halts at step 2 with weight 1 - p1
        halts_at_2 = p[0] + p[1] >= 0.5
        w1 = torch.where(p[0] >= 0.5, torch.ones_like(p[0]), p[0])
        w2 = torch.where(p[0] >= 0.5, 0.0, torch.where(halts_at_2, 1 - p[0], p[1]))
        w3 = 1 - w1 - w2
        expected = sum(w[..., None] * it for w, it in zip((w1, w2, w3), iterates, strict=True))
        torch.testing.assert_close(loop(x), expected, atol=1e-5, rtol=1e-5)
