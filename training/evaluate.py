"""Evaluation of a model directory: perplexity on a text file, and accuracy on generated reasoning tasks.

Task accuracy uses greedy decoding with the inference state (a batched prefill of right-padded prompts, then
one token per step) and each generator's checker. With thinking on the prompt ends in `<think>` and the answer
is what follows the model's `</think>`; with thinking off the prompt pre-fills an empty think block.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from model.nanoprime import NanoPrime
from model.tokenizer import Tokenizer
from training.generators import Generator
from training.sources import DEFAULT_DELIMITER


@torch.no_grad()
def perplexity(
    model: NanoPrime, tokenizer: Tokenizer, path: Path, seq_len: int, batch_size: int = 8, max_tokens: int = 0
) -> dict[str, float]:
    """Mean next-token loss over non-overlapping windows of the file's tokens (documents joined by eos)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"evaluation text not found: {path}")
    text = path.read_text(encoding="utf-8")
    docs = [d.strip() for d in text.split(DEFAULT_DELIMITER) if d.strip()]
    if not docs:
        raise ValueError(f"evaluation text is empty: {path}")
    if seq_len > model.config.max_seq_len:
        raise ValueError(
            f"sequence length {seq_len} is above the model's max_seq_len {model.config.max_seq_len}"
        )
    ids: list[int] = []
    for doc_ids in tokenizer.encode_batch(docs):
        ids += doc_ids + [tokenizer.eos_id]
        if max_tokens and len(ids) > max_tokens:
            ids = ids[: max_tokens + 1]
            break
    window = seq_len + 1
    rows = [ids[i : i + window] for i in range(0, len(ids) - 1, seq_len)]
    rows = [r for r in rows if len(r) > 1]
    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r) for r in chunk)
        batch = torch.tensor([r + [tokenizer.pad_id] * (width - len(r)) for r in chunk], device=device)
        mask = torch.tensor([[1] * (len(r) - 1) + [0] * (width - len(r)) for r in chunk], device=device)
        logits, _ = model(batch[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten(), reduction="none")
        total += float((loss * mask.flatten()).sum())
        count += int(mask.sum())
    mean = total / count
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "tokens": count}


@torch.no_grad()
def greedy_generate(
    model: NanoPrime, prompts: list[list[int]], max_new_tokens: int, stop_ids: set[int]
) -> list[list[int]]:
    """Greedy continuations of a batch of prompts, each cut at (and excluding) its first stop token."""
    device = next(model.parameters()).device
    model.eval()
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    width = int(lengths.max())
    budget = min(max_new_tokens, model.config.max_seq_len - width)
    if budget < 1:
        raise ValueError(
            f"a prompt of {width} tokens leaves no room under max_seq_len {model.config.max_seq_len}"
        )
    padded = torch.tensor([p + [0] * (width - len(p)) for p in prompts], device=device)
    state = model.new_state(len(prompts))
    logits, state = model(padded, state, lengths=lengths)
    next_ids = logits[torch.arange(len(prompts), device=device), lengths - 1].argmax(-1)
    outputs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for step in range(budget):
        for row, token in enumerate(next_ids.tolist()):
            if not done[row]:
                if token in stop_ids:
                    done[row] = True
                else:
                    outputs[row].append(token)
        if all(done) or step == budget - 1:
            break
        logits, state = model(next_ids[:, None], state)
        next_ids = logits[:, -1].argmax(-1)
    return outputs


@dataclass
class TaskScore:
    generator: str
    thinking: bool
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def task_accuracy(
    model: NanoPrime,
    tokenizer: Tokenizer,
    generator: Generator,
    n: int,
    thinking: bool,
    seed: int = 0,
    max_new_tokens: int = 256,
    batch_size: int = 16,
) -> TaskScore:
    """Share of n fresh tasks (seeds apart from training's) whose answer passes the generator's check."""
    tasks = [generator.sample(random.Random(f"eval:{seed}:{generator.name}:{k}")) for k in range(n)]
    stop = {tokenizer.end_of_turn_id, tokenizer.eos_id}
    correct = 0
    for start in range(0, n, batch_size):
        chunk = tasks[start : start + batch_size]
        prompts = [
            tokenizer.encode_chat([{"role": "user", "content": t.prompt}], thinking=thinking) for t in chunk
        ]
        for task, output in zip(chunk, greedy_generate(model, prompts, max_new_tokens, stop), strict=True):
            if thinking:
                if tokenizer.think_end_id not in output:
                    continue  # never finished thinking: no answer
                output = output[output.index(tokenizer.think_end_id) + 1 :]
            correct += bool(generator.check(task, tokenizer.decode(output, skip_special_tokens=True)))
    return TaskScore(generator.name, thinking, correct, n)
