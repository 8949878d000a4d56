"""The plain-transformer baseline used by the same-run benchmarks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.config import preset
from model.nanoprime import NanoPrime
from model.reference_transformer import ReferenceConfig, ReferenceTransformer


def test_matches_the_shape_and_size_of_a_nanoprime_config():
    config = preset("pocket")
    reference = ReferenceConfig.matching(config)
    assert (reference.d_model, reference.n_layers, reference.vocab_size, reference.ffn_hidden) == (
        config.d_model,
        config.n_layers,
        config.vocab_size,
        config.ffn_hidden,
    )
    with torch.device("meta"):
        ours, theirs = NanoPrime(config).num_parameters(), ReferenceTransformer(reference).num_parameters()
    assert abs(ours - theirs) / theirs < 0.1  # "same size": within 10%
    with pytest.raises(ValueError, match="not divisible"):
        ReferenceConfig.matching(config.with_overrides(**{"mla.n_heads": 5}))


def test_is_causal_and_trains():
    torch.manual_seed(0)
    model = ReferenceTransformer(ReferenceConfig.matching(preset("tiny")))
    ids = torch.randint(0, 320, (2, 16))
    logits, extra = model(ids)
    assert extra is None and logits.shape == (2, 16, 320)
    changed = ids.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 320
    with torch.no_grad():
        torch.testing.assert_close(model(changed)[0][:, :10], logits[:, :10].detach(), atol=1e-6, rtol=0)
        assert not torch.allclose(model(changed)[0][:, 10:], logits[:, 10:].detach())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = F.cross_entropy(model(ids[:, :-1])[0].flatten(0, 1), ids[:, 1:].flatten())
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.7 * losses[0]
    with pytest.raises(ValueError, match="longer than max_seq_len"):
        model(torch.zeros(1, 513, dtype=torch.long))
