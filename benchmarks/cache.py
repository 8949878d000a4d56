"""Inference-state bytes per token for every preset, against an all-MHA transformer of the same shape.

NanoPrime's state is MLA's latent cache (kv_lora_rank + rope_dim values per token per MLA layer, bf16 for an
fp32 model) plus Mamba's fixed conv/SSM state per sequence (fp32); a standard transformer caches a key and a
value of d_model per token per layer, in fp32 like the Llama of benchmarks/decode.py, or in 16 bits. The
target is judged against the 16-bit one, the size of our latents. Per-token figures are at a full context
(max_seq_len tokens), where Mamba's fixed state is spread thinnest, and at 512 tokens. Figures come from
InferenceState.nbytes() of a real state (models are built on the meta device, so even the 1.5B preset costs no
memory); the pocket row is cross-checked against a real prefill. Run: .venv/bin/python benchmarks/cache.py
"""

from __future__ import annotations

import torch

from model.config import PRESETS, preset
from model.nanoprime import NanoPrime
from model.reference_transformer import ReferenceConfig, ReferenceTransformer

TARGET = 0.07
SHORT_CONTEXT = 512
TEST_SHAPES = {"tiny"}  # unit-test shape, far too narrow for the target to mean anything


def state_bytes(model: NanoPrime, tokens: int) -> int:
    """nbytes() of a one-sequence state holding `tokens` tokens."""
    state = model.new_state(1, device="cpu")
    state.lengths.fill_(tokens)
    return state.nbytes()


def cross_check_with_a_real_prefill(name: str, tokens: int) -> None:
    torch.manual_seed(0)
    model = NanoPrime(preset(name)).eval()
    state = model.new_state(1)
    with torch.no_grad():
        model(torch.randint(0, model.config.vocab_size, (1, tokens)), state)
    assert state.nbytes() == state_bytes(model, tokens), "counted and real state sizes differ"
    print(
        f"cross-check: {name} after a real {tokens}-token prefill holds {state.nbytes():,} bytes, as counted"
    )


def main() -> None:
    header = (
        f"{'preset':<12} {'layers':>10} {'MLA B/tok':>10} {'Mamba B/seq':>12} {'ours B/tok':>11} "
        f"{'MHA B/tok':>10} {'ratio':>7} {f'ratio@{SHORT_CONTEXT}':>10} {'vs 16-bit MHA':>14}  "
        f"target <= {TARGET:.0%}"
    )
    print("fp32 models (MLA latents cached in bf16), bytes per token at a full context; MHA in fp32")
    print(header)
    print("-" * len(header))
    for name in PRESETS:
        config = preset(name)
        with torch.device("meta"):
            model = NanoPrime(config)
            reference = ReferenceTransformer(ReferenceConfig.matching(config))
        fixed = state_bytes(model, 0)
        full = state_bytes(model, config.max_seq_len)
        per_token_mla = (full - fixed) // config.max_seq_len
        mha = reference.kv_cache_bytes_per_token(element_size=4)
        ratio = full / config.max_seq_len / mha
        short_ratio = state_bytes(model, SHORT_CONTEXT) / SHORT_CONTEXT / mha
        half_ratio = full / config.max_seq_len / reference.kv_cache_bytes_per_token(element_size=2)
        layers = f"{config.layer_pattern.count('mamba')}+{config.layer_pattern.count('mla')}"
        verdict = "test shape" if name in TEST_SHAPES else ("ok" if half_ratio <= TARGET else "OVER")
        print(
            f"{name:<12} {layers:>10} {per_token_mla:>10,} {fixed:>12,} {full / config.max_seq_len:>11,.0f} "
            f"{mha:>10,} {ratio:>7.2%} {short_ratio:>10.2%} {half_ratio:>14.2%}  {verdict}"
        )
    cross_check_with_a_real_prefill("pocket", SHORT_CONTEXT)


if __name__ == "__main__":
    main()
