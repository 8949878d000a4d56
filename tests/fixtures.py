"""A tiny model directory for tests: a byte-level BPE trained here and a tiny-preset random-weight model.

Everything is generated from fixed seeds, so two builds give the same tokenizer and the same weights. Run
`python -m tests.fixtures OUT_DIR` to get one on disk (for trying the CLI by hand).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch

from model.config import preset
from model.nanoprime import NanoPrime
from model.tokenizer import Tokenizer
from training.tokenizer import train_tokenizer

SEED = 1234
TOKENIZER_VOCAB = 320
# At the training init the token embedding dominates the residual stream and greedy decoding repeats one token
# whatever the prompt; wider matrices make a random model's continuation depend on its context, which is what
# gives the equality tests (batched vs alone, kept state vs full prefill) their power.
WEIGHT_SCALE = 10.0
MAX_SEQ_LEN = 2048  # longer than the preset's, so a CLI test can interrupt an answer that is still running

_SUBJECTS = ["Il gatto", "La città", "Perché il caffè", "Lo studente", "The model", "A robot", "Però già"]
_VERBS = ["mangia", "è", "sembra", "thinks about", "writes", "guarda", "loves"]
_OBJECTS = ["la pizza 🍕", "un caffè ☕", "più età", "the answer 🤖", "1 2 3", "l'università", "🎉 e ciò"]


def tiny_corpus(n_sentences: int = 400, seed: int = SEED) -> list[str]:
    """Short sentences mixing English, Italian accents and emoji, so multi-byte characters span tokens."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(['.', '!', '?'])}"
        for _ in range(n_sentences)
    ]


def build_tiny_tokenizer() -> Tokenizer:
    return train_tokenizer(tiny_corpus(), vocab_size=TOKENIZER_VOCAB)


def build_tiny_model() -> tuple[NanoPrime, Tokenizer]:
    """A tiny-preset model with random weights (fixed seed) and the tiny tokenizer, sized to each other."""
    tokenizer = build_tiny_tokenizer()
    config = preset("tiny").with_overrides(vocab_size=tokenizer.vocab_size, max_seq_len=MAX_SEQ_LEN)
    torch.manual_seed(SEED)
    model = NanoPrime(config).eval()
    with torch.no_grad():  # see WEIGHT_SCALE
        for name, param in model.named_parameters():
            if param.dim() == 2 and not name.startswith("embed"):
                param.mul_(WEIGHT_SCALE)
    return model, tokenizer


def build_tiny_model_dir(path: str | Path) -> Path:
    """Write a complete model directory (config, packed weights, tokenizer, card) to `path` and return it."""
    from model.checkpoint import save_model_dir

    path = Path(path)
    model, tokenizer = build_tiny_model()
    save_model_dir(model, tokenizer, path, {"description": "tiny random-weight test model", "seed": SEED})
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.fixtures OUT_DIR")
    print(build_tiny_model_dir(sys.argv[1]))
