"""The `nanoprime` command: chat driven through a pseudo-terminal, batch generation, a bad model directory."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "backend.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny model: threads only contend on a shared machine
TIMEOUT = 90.0


class Terminal:
    """A child process on a pseudo-terminal, read until expected text shows up."""

    def __init__(self, argv: list[str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes the program, with the pty as its controlling terminal
            # Start as from a shell: Ctrl-C deliverable even if something in this test process ignores it.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            os.execve(argv[0], argv, ENV)
        self.output = ""

    def expect(self, text: str, timeout: float = TIMEOUT) -> str:
        """Read until `text` appears after what earlier expects consumed; return everything up to it."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read(remaining):
                raise AssertionError(f"did not see {text!r}; the terminal showed:\n{self.output}")
        before, _, self.output = self.output.partition(text)
        return before

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            self._read(0.1)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"the chat did not exit; the terminal showed:\n{self.output}")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # the child closed the terminal
            return False
        self.output += data.decode("utf-8", errors="replace")
        return bool(data)


def chat(model_dir: Path, *options: str) -> Terminal:
    return Terminal([*CLI, "chat", "--model", str(model_dir), "--temperature", "0", *options])


def test_chat_answers_takes_commands_and_exits_on_exit(tiny_model_dir):
    term = chat(tiny_model_dir, "--max-new-tokens", "10")
    term.expect("> ")
    term.send("Ciao, come stai?\r")
    answer = term.expect("tokens/s]")
    assert answer.count("\x1b[2m") == 2  # the thinking and the closing stats line are dimmed
    assert "[length · 10 tokens" in answer or "[stop ·" in answer
    term.expect("> ")
    term.send("/think off\r")
    term.expect("(thinking off)")
    term.send("E poi? 🍕\r")
    answer = term.expect("tokens/s]")
    assert answer.count("\x1b[2m") == 1  # only the stats line: no thinking
    term.expect("> ")
    term.send("/exit\r")
    assert term.wait() == 0


def test_ctrl_c_stops_the_answer_not_the_program_and_eof_exits(tiny_model_dir):
    term = chat(tiny_model_dir, "--ignore-eos", "--max-new-tokens", "1500")
    term.expect("> ")
    # input() writes the prompt before it blocks in read(); a signal landing in between waits for the next
    # line (CPython's race, microseconds wide for a person), so give it time to reach read() first.
    time.sleep(0.5)
    term.send("\x03")  # Ctrl-C at the prompt: a fresh prompt
    term.expect("> ")
    term.send("Raccontami una storia lunga\r")
    term.expect("\x1b[2m")  # the answer is streaming (its thinking, dimmed)
    term.send("\x03")
    stopped = term.expect("tokens/s]")
    assert "[cancelled · " in stopped
    tokens = int(stopped.split("[cancelled · ")[1].split(" tokens")[0])
    assert 0 < tokens < 1500
    term.expect("> ")
    term.send("\x04")  # Ctrl-D: end of input
    assert term.wait() == 0


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=ENV, timeout=TIMEOUT)


def test_generate_batch_gives_the_same_answers_as_one_at_a_time(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Perché il caffè?\n\nTell me about a robot 🤖\n", encoding="utf-8")
    common = ["generate", "--model", str(tiny_model_dir), "--temperature", "0", "--max-new-tokens", "16"]
    runs = {}
    for batch in ("1", "3"):
        result = run_cli(*common, "--json", "--batch", batch, "--file", str(prompts), "Ciao! è già ora?")
        assert result.returncode == 0, result.stderr
        runs[batch] = [json.loads(line) for line in result.stdout.splitlines()]
        assert f"(batch {batch})" in result.stderr
    assert [r["prompt"] for r in runs["3"]] == [
        "Ciao! è già ora?",
        "Perché il caffè?",
        "Tell me about a robot 🤖",
    ]
    assert runs["1"] == [{**r, "timings": runs["1"][i]["timings"]} for i, r in enumerate(runs["3"])]
    assert all(r["usage"]["completion_tokens"] >= 1 for r in runs["3"])


def test_a_bad_model_directory_is_one_clear_line(tmp_path):
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    for command, model in (("chat", tmp_path / "missing"), ("generate", tmp_path)):
        result = run_cli(command, "--model", str(model), *(["hello"] if command == "generate" else []))
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(model) in lines[0], result.stderr
