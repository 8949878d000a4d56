"""InferenceState: memory accounting and the serving operations (concat, select, clone, to)."""

from __future__ import annotations

import pytest
import torch

from model.modules.mamba import MambaCache
from model.modules.mla import MLACache
from model.state import InferenceState
from tests.model.helpers import max_diff, run_in_pieces, tiny_model

TOL = 1e-4  # between states: the same bf16 latents
FULL_TOL = 5e-3  # against the full forward: see test_nanoprime.py
EXACT = {"bitnet.quantize_activations": False}  # see test_nanoprime.py's docstring


def ids_for(seed: int, length: int) -> torch.Tensor:
    return torch.randint(0, 320, (1, length), generator=torch.Generator().manual_seed(seed))


def test_nbytes_counts_mla_tokens_and_fixed_mamba_state():
    model = tiny_model()
    config = model.config
    state = model.new_state(2)
    mamba_bytes = sum(c.nbytes(state.lengths) for c in state.caches if isinstance(c, MambaCache))
    assert mamba_bytes > 0 and state.nbytes() == mamba_bytes  # nothing cached yet but the fixed states
    n_mla = config.layer_pattern.count("mla")
    per_token = n_mla * (config.mla.kv_lora_rank + config.mla.rope_dim) * 2  # bf16 latents and rope keys
    with torch.no_grad():
        model(torch.zeros(2, 9, dtype=torch.long), state, lengths=torch.tensor([9, 4]))
        assert state.nbytes() == mamba_bytes + 13 * per_token
        model(torch.zeros(2, 1, dtype=torch.long), state)
        assert state.nbytes() == mamba_bytes + 15 * per_token
    ssm_before = [c.ssm.shape for c in state.caches if isinstance(c, MambaCache)]
    with torch.no_grad():
        model(torch.zeros(2, 30, dtype=torch.long), state)
    assert [c.ssm.shape for c in state.caches if isinstance(c, MambaCache)] == ssm_before  # does not grow


def test_state_holds_one_cache_per_layer_in_order():
    model = tiny_model()
    state = model.new_state(3)
    assert [type(c).__name__ for c in state.caches] == ["Mamba2Cache", "MLACache", "Mamba2Cache", "MLACache"]
    assert all(c.ssm.shape[0] == 3 for c in state.caches if isinstance(c, MambaCache))
    assert all(c.latent.shape[0] == 3 for c in state.caches if isinstance(c, MLACache))
    assert state.lengths.dtype == torch.long and state.lengths.tolist() == [0, 0, 0]


def test_concat_then_decode_equals_decoding_each_sequence_alone():
    model = tiny_model(**EXACT)
    a, b = ids_for(1, 14), ids_for(2, 9)
    _, state_a = run_in_pieces(model, a[:, :10], [10])
    _, state_b = run_in_pieces(model, b[:, :6], [6])
    batch = InferenceState.concat([state_a.clone(), state_b.clone()])
    assert batch.lengths.tolist() == [10, 6]
    with torch.no_grad():
        for k in range(3):
            logits, batch = model(torch.stack([a[0, 10 + k], b[0, 6 + k]])[:, None], batch)
            alone_a, state_a = model(a[:, 10 + k : 11 + k], state_a)
            alone_b, state_b = model(b[:, 6 + k : 7 + k], state_b)
            assert max_diff(logits[0], alone_a[0]) <= TOL
            assert max_diff(logits[1], alone_b[0]) <= TOL


def test_select_drops_and_reorders_rows():
    model = tiny_model(**EXACT)
    ids = torch.cat([ids_for(s, 8) for s in (3, 4, 5)])
    _, state = run_in_pieces(model, ids, [8])
    kept = state.select([2, 0])
    assert kept.batch_size == 2 and kept.lengths.tolist() == [8, 8]
    nxt = torch.tensor([[7], [11]])
    with torch.no_grad():
        logits, _ = model(nxt, kept)
    full = model(torch.cat([ids[[2, 0]], nxt], dim=1))[0][:, -1]
    assert max_diff(logits[:, 0], full) <= FULL_TOL
    with pytest.raises(ValueError, match=r"rows in \[0, 3\)"):
        state.select([3])
    with pytest.raises(ValueError, match="1-D"):
        state.select([[0]])


def test_clone_is_independent():
    model = tiny_model()
    _, state = run_in_pieces(model, ids_for(6, 5), [5])
    copy = state.clone()
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), copy)
    assert state.lengths.tolist() == [5] and copy.lengths.tolist() == [8]
    assert state.nbytes() < copy.nbytes()
    original_ssm = [c.ssm for c in state.caches if isinstance(c, MambaCache)]
    copied_ssm = [c.ssm for c in copy.caches if isinstance(c, MambaCache)]
    assert all(not torch.equal(x, y) for x, y in zip(original_ssm, copied_ssm, strict=True))


def test_to_device_keeps_every_tensor():
    model = tiny_model()
    _, state = run_in_pieces(model, ids_for(7, 4), [4])
    moved = state.to("cpu")
    assert moved.fingerprint == state.fingerprint and moved.nbytes() == state.nbytes()
    assert all(type(a) is type(b) for a, b in zip(moved.caches, state.caches, strict=True))
    meta = state.to("meta")
    assert meta.lengths.device.type == "meta" and meta.caches[1].latent.device.type == "meta"


def test_concat_refuses_states_of_different_models():
    a = tiny_model().new_state(1)
    b = tiny_model(**{"mla.rope_dim": 4}).new_state(1)
    with pytest.raises(ValueError, match="different configs"):
        InferenceState.concat([a, b])
    with pytest.raises(ValueError, match="at least one"):
        InferenceState.concat([])
