"""The tokenizer and chat template shared by training, the engine and the server.

A thin wrapper over a byte-level BPE from the HF `tokenizers` library. The chat template is written twice,
once in Python (`render_chat`, used by our own code) and once as Jinja (saved into tokenizer_config.json so
that `transformers.AutoTokenizer.apply_chat_template` works on an exported model directory); the tests check
that the two render the identical string.

A rendered conversation:

    <|system|>{system}<|end|>\\n<|user|>{user}<|end|>\\n<|assistant|><think>{thinking}</think>{answer}<|end|>\\n

The generation prompt is `<|assistant|><think>` with thinking on and `<|assistant|><think></think>` with it
off.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

EOS = "<|endoftext|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END_OF_TURN = "<|end|>"
THINK_START = "<think>"
THINK_END = "</think>"
SPECIAL_TOKENS = (EOS, SYSTEM, USER, ASSISTANT, END_OF_TURN, THINK_START, THINK_END)
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# The Jinja twin of Tokenizer.render_chat. `enable_thinking` (the common kwarg name) and `thinking` both work.
CHAT_TEMPLATE = (
    "{%- if enable_thinking is defined -%}{%- set think = enable_thinking -%}"
    "{%- elif thinking is defined -%}{%- set think = thinking -%}"
    "{%- else -%}{%- set think = true -%}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|assistant|><think>' }}"
    "{%- if message['thinking'] is defined and message['thinking'] -%}{{ message['thinking'] }}"
    "{%- elif message['reasoning_content'] is defined and message['reasoning_content'] -%}"
    "{{ message['reasoning_content'] }}{%- endif -%}"
    "{{ '</think>' + (message['content'] or '') + '<|end|>\\n' }}"
    "{%- elif message['role'] == 'user' or message['role'] == 'system' -%}"
    "{{ '<|' + message['role'] + '|>' + (message['content'] or '') + '<|end|>\\n' }}"
    "{%- else -%}{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|assistant|><think>' }}{%- if not think -%}{{ '</think>' }}{%- endif -%}"
    "{%- endif -%}"
)


class Tokenizer:
    """Byte-level BPE with NanoPrime's special tokens and chat template."""

    def __init__(self, hf_tokenizer: HFTokenizer, source: str = "tokenizer") -> None:
        missing = [token for token in SPECIAL_TOKENS if hf_tokenizer.token_to_id(token) is None]
        if missing:
            raise ValueError(f"{source} lacks the special tokens {', '.join(missing)}")
        self._tok = hf_tokenizer
        self._ids = {token: hf_tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}

    # ---- loading and saving --------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load from a model directory (its tokenizer.json) or from a tokenizer.json file."""
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise ValueError(f"no tokenizer found at {file}")
        try:
            hf_tokenizer = HFTokenizer.from_file(str(file))
        except Exception as error:  # the tokenizers library raises a bare Exception on bad JSON
            raise ValueError(f"cannot read tokenizer {file}: {error}") from error
        return cls(hf_tokenizer, source=f"tokenizer {file}")

    @classmethod
    def from_str(cls, text: str) -> Tokenizer:
        """From the JSON text of a tokenizer.json (as `to_str` gives it)."""
        try:
            hf_tokenizer = HFTokenizer.from_str(text)
        except Exception as error:  # the tokenizers library raises a bare Exception on bad JSON
            raise ValueError(f"cannot read tokenizer JSON: {error}") from error
        return cls(hf_tokenizer)

    def to_str(self) -> str:
        return self._tok.to_str()

    def save(self, directory: str | Path, model_max_length: int | None = None) -> None:
        """Write tokenizer.json + tokenizer_config.json (with the Jinja chat template) for transformers."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / TOKENIZER_FILE))
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": None,
            "eos_token": EOS,
            "pad_token": EOS,
            "unk_token": None,
            "additional_special_tokens": [t for t in SPECIAL_TOKENS if t != EOS],
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        }
        if model_max_length is not None:
            config["model_max_length"] = model_max_length
        text = json.dumps(config, indent=2, ensure_ascii=False)
        (directory / TOKENIZER_CONFIG_FILE).write_text(text + "\n", encoding="utf-8")

    # ---- encoding ------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int:
        return self._ids[EOS]

    @property
    def pad_id(self) -> int:
        return self._ids[EOS]

    @property
    def end_of_turn_id(self) -> int:
        return self._ids[END_OF_TURN]

    @property
    def think_start_id(self) -> int:
        return self._ids[THINK_START]

    @property
    def think_end_id(self) -> int:
        return self._ids[THINK_END]

    def token_id(self, token: str) -> int:
        """Id of a special token such as '<|user|>'."""
        if token not in self._ids:
            raise ValueError(f"'{token}' is not a special token; choose one of {list(self._ids)}")
        return self._ids[token]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings inside it become their single ids."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---- chat ----------------------------------------------------------------------------------------------
    def render_chat(
        self, messages: list[Mapping[str, Any]], add_generation_prompt: bool = True, thinking: bool = True
    ) -> str:
        """The conversation as text, optionally followed by the assistant's generation prompt."""
        return render_chat(messages, add_generation_prompt=add_generation_prompt, thinking=thinking)

    def encode_chat(
        self, messages: list[Mapping[str, Any]], add_generation_prompt: bool = True, thinking: bool = True
    ) -> list[int]:
        return self.encode(self.render_chat(messages, add_generation_prompt, thinking))


def render_message(message: Mapping[str, Any]) -> str:
    """One turn; an assistant turn puts `thinking` (or `reasoning_content`) in its think block."""
    role = message.get("role")
    if role not in ROLE_TOKENS:
        raise ValueError(f"unknown chat role: {role!r}; use one of {list(ROLE_TOKENS)}")
    content = message.get("content") or ""
    if not isinstance(content, str):
        raise ValueError(f"chat message content must be a string, got {type(content).__name__}")
    if role == "assistant":
        thinking = message.get("thinking") or message.get("reasoning_content") or ""
        return f"{ASSISTANT}{THINK_START}{thinking}{THINK_END}{content}{END_OF_TURN}\n"
    return f"{ROLE_TOKENS[role]}{content}{END_OF_TURN}\n"


def generation_prompt(thinking: bool = True) -> str:
    return f"{ASSISTANT}{THINK_START}" if thinking else f"{ASSISTANT}{THINK_START}{THINK_END}"


def render_chat(
    messages: list[Mapping[str, Any]], add_generation_prompt: bool = True, thinking: bool = True
) -> str:
    text = "".join(render_message(message) for message in messages)
    if add_generation_prompt:
        text += generation_prompt(thinking)
    return text
