"""Samples to token ids plus a loss mask: documents train on every token, chats only on assistant turns.

mask[i] = 1 means token i is a training target (predicted from the tokens before it). In a conversation the
targets are everything the assistant writes after its role marker: `<think>`, the thinking, `</think>`, the
answer and `<|end|>`; system and user turns, role markers and the separating newlines are context only.
"""

from __future__ import annotations

from model.tokenizer import ASSISTANT, Tokenizer, render_message
from training.sources import Sample


def encode_sample(tokenizer: Tokenizer, sample: Sample) -> tuple[list[int], list[int]]:
    """(ids, mask) for one sample, ending with the end-of-text token."""
    if sample.text is not None:
        ids = tokenizer.encode(sample.text) + [tokenizer.eos_id]
        return ids, [1] * len(ids)
    ids: list[int] = []
    mask: list[int] = []
    for message in sample.messages or ():
        text = render_message(message)
        if message["role"] == "assistant":
            body, newline = text[len(ASSISTANT) : -1], text[-1:]
            for piece, weight in ((ASSISTANT, 0), (body, 1), (newline, 0)):
                piece_ids = tokenizer.encode(piece)
                ids += piece_ids
                mask += [weight] * len(piece_ids)
        else:
            piece_ids = tokenizer.encode(text)
            ids += piece_ids
            mask += [0] * len(piece_ids)
    ids.append(tokenizer.eos_id)
    mask.append(0)
    return ids, mask
