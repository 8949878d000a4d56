"""The `nanoprime` command: serve the app, chat in the terminal, or generate for a batch of prompts.

    nanoprime serve [--model DIR] [--host H] [--port P]
    nanoprime chat --model DIR [sampling options]
    nanoprime generate --model DIR --batch N [--file PROMPTS.txt] [PROMPT ...] [sampling options]

chat and generate run the same engine as the server (backend/engine.py) in this process.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from model.generation import Done, Failed, SamplingParams, ThinkingDelta, TokenDelta

DIM, RESET = "\x1b[2m", "\x1b[0m"
CHAT_HELP = (
    "commands: /reset (new conversation), /think on|off, /budget N|off, /exit. "
    "Ctrl-C stops an answer; Ctrl-D or /exit quits."
)


class CliError(Exception):
    """A problem to report in one line before exiting non-zero."""


# ---- arguments ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanoprime", description="NanoPrime: serve, chat or generate.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the web app and API server")
    serve.add_argument("--model", type=Path, help="model directory (default: the server settings')")
    serve.add_argument("--host", help="address to listen on")
    serve.add_argument("--port", type=int, help="port to listen on")

    chat = commands.add_parser("chat", help="chat with a model in the terminal")
    _add_model_options(chat)
    chat.add_argument("--system", default=None, help="a system message for the conversation")

    generate = commands.add_parser("generate", help="generate answers for many prompts, batched")
    _add_model_options(generate)
    generate.add_argument("prompts", nargs="*", help="prompts (each one is a user message)")
    generate.add_argument("--file", type=Path, help="a text file with one prompt per line")
    generate.add_argument("--batch", type=int, default=8, help="sequences decoded together (default 8)")
    generate.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="model directory")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 for greedy (default 0.7)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-think", action="store_true", help="answer without a thinking block")
    parser.add_argument("--budget", type=int, default=None, help="thinking budget in tokens")
    parser.add_argument("--ignore-eos", action="store_true", help="generate max-new-tokens, past end of turn")


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    try:
        return SamplingParams(
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            min_p=args.min_p,
            repetition_penalty=args.repetition_penalty,
            max_new_tokens=args.max_new_tokens,
            stop=list(args.stop),
            seed=args.seed,
            thinking=not args.no_think,
            thinking_budget=args.budget,
            ignore_eos=args.ignore_eos,
        )
    except ValueError as error:
        raise CliError(str(error)) from error


def start_engine(args: argparse.Namespace, max_batch_size: int, max_queue: int) -> Any:
    """Load the model directory and start an engine on it; a bad directory is a CliError."""
    if not args.model.is_dir():
        raise CliError(f"model directory not found: {args.model}")
    import torch  # imported here so `nanoprime --help` and a wrong path answer at once

    from backend.engine import Engine, torch_on_one_thread
    from model.checkpoint import load_model_dir

    try:
        with torch_on_one_thread():  # the engine's worker alone keeps a team of threads
            model, tokenizer = load_model_dir(args.model, device=args.device)
    except (ValueError, OSError, RuntimeError) as error:
        raise CliError(f"cannot load the model in {args.model}: {error}") from error
    torch.set_grad_enabled(False)
    engine = Engine(model, tokenizer, max_batch_size=max_batch_size, max_queue=max_queue)
    # Threads inherit the signal mask: started with SIGINT blocked, the worker (and the threads it spawns)
    # never takes a Ctrl-C that the main thread, waiting in input() or on the stream, must see.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        engine.start()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    return engine


# ---- serve -------------------------------------------------------------------------------------------------
def run_serve(args: argparse.Namespace) -> int:
    from backend.server import serve
    from backend.settings import Settings

    overrides = {"model_dir": args.model, "host": args.host, "port": args.port}
    serve(Settings(**{key: value for key, value in overrides.items() if value is not None}))
    return 0


# ---- chat --------------------------------------------------------------------------------------------------
class ChatPrinter:
    """Writes streamed events to the terminal: thinking dimmed (when it is a terminal), then the answer."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.color = out.isatty()
        self.thinking = ""
        self.answer = ""
        self._in_thinking = False

    def event(self, event: Any) -> None:
        if isinstance(event, ThinkingDelta):
            if not self._in_thinking:
                self._write(DIM if self.color else "[thinking] ")
                self._in_thinking = True
            self.thinking += event.text
            self._write(event.text)
        elif isinstance(event, TokenDelta):
            self._close_thinking()
            self.answer += event.text
            self._write(event.text)
        elif isinstance(event, Done):
            self._close_thinking()
            tokens, speed = event.usage["completion_tokens"], event.timings["tokens_per_s"]
            self._write(
                self._dim(f"\n[{event.finish_reason} · {tokens} tokens · {speed:.1f} tokens/s]") + "\n"
            )
        elif isinstance(event, Failed):
            self._close_thinking()
            self._write(f"\n[error: {event.message}]\n")

    def _close_thinking(self) -> None:
        if self._in_thinking:
            self._write(RESET + "\n" if self.color else "\n")
            self._in_thinking = False

    def _dim(self, text: str) -> str:
        return f"{DIM}{text}{RESET}" if self.color else text

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


def run_chat(args: argparse.Namespace) -> int:
    params = sampling_params(args)
    engine = start_engine(args, max_batch_size=1, max_queue=1)
    out = sys.stdout
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages: list[dict[str, str]] = list(system)
    out.write(f"NanoPrime chat with {args.model}. {CHAT_HELP}\n")
    try:
        while True:
            try:
                line = input("> ")
            except EOFError:
                out.write("\n")
                return 0
            except KeyboardInterrupt:  # at the prompt Ctrl-C only clears the line
                out.write("\n")
                continue
            text = line.strip()
            if text.startswith("/"):
                if text in ("/exit", "/quit"):
                    return 0
                if text == "/reset":
                    messages = list(system)
                out.write(chat_command(text, params) + "\n")
                continue
            if not text:
                continue
            messages.append({"role": "user", "content": line})
            thinking, answer = stream_answer(engine, messages, params, out)
            messages.append({"role": "assistant", "content": answer, "thinking": thinking})
    finally:
        engine.shutdown()


def chat_command(text: str, params: SamplingParams) -> str:
    """Apply a /command to the settings and say what it did."""
    name, _, value = text.partition(" ")
    value = value.strip()
    if name == "/reset":
        return "(new conversation)"
    if name == "/think" and value in ("on", "off"):
        params.thinking = value == "on"
        return f"(thinking {value})"
    if name == "/budget" and value == "off":
        params.thinking_budget = None
        return "(no thinking budget)"
    if name == "/budget" and value.isdigit():
        params.thinking_budget = int(value)
        return f"(thinking budget {value} tokens)"
    return f"unknown command {text!r}; {CHAT_HELP}"


def stream_answer(
    engine: Any, messages: list[dict[str, str]], params: SamplingParams, out: TextIO
) -> tuple[str, str]:
    """Print one answer as it streams; Ctrl-C cancels it (the partial answer is kept)."""
    printer = ChatPrinter(out)
    try:
        handle = engine.submit(messages, params)
    except ValueError as error:
        out.write(f"[error: {error}]\n")
        messages.pop()
        return "", ""
    while True:
        try:
            for event in handle:
                printer.event(event)
            break
        except KeyboardInterrupt:
            handle.cancel()  # the loop goes on to print what is left, ending in Done("cancelled")
    return printer.thinking, printer.answer


# ---- generate ----------------------------------------------------------------------------------------------
def run_generate(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise CliError(f"--batch must be >= 1, got {args.batch}")
    prompts = list(args.prompts)
    if args.file is not None:
        try:
            prompts += [line for line in args.file.read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError as error:
            raise CliError(f"cannot read prompts from {args.file}: {error.strerror}") from error
    if not prompts:
        raise CliError("no prompts: give them as arguments or with --file")
    params = sampling_params(args)
    engine = start_engine(args, max_batch_size=args.batch, max_queue=len(prompts))
    try:
        started = time.perf_counter()
        handles = [engine.submit([{"role": "user", "content": prompt}], params) for prompt in prompts]
        results = [collect(handle) for handle in handles]
        elapsed = time.perf_counter() - started
    except ValueError as error:
        raise CliError(str(error)) from error
    finally:
        engine.shutdown()
    total = 0
    for index, (prompt, (thinking, answer, done)) in enumerate(zip(prompts, results, strict=True), 1):
        if isinstance(done, Failed):
            raise CliError(f"prompt {index} failed: {done.message}")
        total += done.usage["completion_tokens"]
        if args.json:
            record = {
                "prompt": prompt,
                "thinking": thinking,
                "answer": answer,
                "finish_reason": done.finish_reason,
            }
            print(json.dumps(record | {"usage": done.usage, "timings": done.timings}, ensure_ascii=False))
        else:
            print(f"### {index}: {prompt}")
            if thinking:
                print(f"[thinking] {thinking}")
            print(answer)
            print(f"[{done.finish_reason} · {done.usage['completion_tokens']} tokens]\n")
    print(
        f"{len(prompts)} prompts, {total} tokens in {elapsed:.2f} s: {total / elapsed:.1f} tokens/s "
        f"(batch {args.batch})",
        file=sys.stderr,
    )
    return 0


def collect(handle: Any) -> tuple[str, str, Done | Failed]:
    thinking, answer, last = [], [], None
    for event in handle:
        if isinstance(event, ThinkingDelta):
            thinking.append(event.text)
        elif isinstance(event, TokenDelta):
            answer.append(event.text)
        else:
            last = event
    assert last is not None  # the handle always ends with Done or Failed
    return "".join(thinking), "".join(answer), last


# ---- entry point -------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"serve": run_serve, "chat": run_chat, "generate": run_generate}
    try:
        return commands[args.command](args)
    except CliError as error:
        print(f"nanoprime {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
