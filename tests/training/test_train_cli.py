"""`python -m training` as a user runs it: bad input gives one clear line and exit 2; Ctrl-C saves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, trainers
from training_helpers import tiny_recipe

from training.config import recipe_from_dict
from training.distributed import DistInfo
from training.trainer import Trainer

ENV = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}


def write_recipe(path: Path, stories: Path, tokenizer: Path, out_dir: Path, steps: int = 4) -> Path:
    """A small TOML recipe (written by hand: the standard library reads TOML but does not write it)."""
    path.write_text(
        f"""
seed = 3
out_dir = "{out_dir}"

[model]
preset = "tiny"
n_layers = 2
max_seq_len = 128

[tokenizer]
path = "{tokenizer}"

[data]
val_docs = 4
val_rows = 2

[data.sources.stories]
type = "text"
paths = ["{stories}"]

[data.sources.arithmetic]
type = "generator"
generator = "arithmetic"

[[phases]]
name = "main"
mixture = {{ stories = 1.0, arithmetic = 1.0 }}

[optim]
warmup_steps = 1

[train]
steps = {steps}
micro_batch_size = 2
seq_len = 32
log_every = 1
eval_every = 1000
plot = false
""",
        encoding="utf-8",
    )
    return path


def run_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training", *args], capture_output=True, text=True, env=ENV, timeout=timeout
    )


def assert_clear_error(completed: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2 and exactly one line on stderr, `error: ...`, naming the problem; no traceback."""
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), completed.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def recipe_file(tmp_path: Path, corpus_dir: Path, tokenizer_dir: Path) -> Path:
    return write_recipe(tmp_path / "recipe.toml", corpus_dir / "stories.txt", tokenizer_dir, tmp_path / "run")


def test_missing_data_file(tmp_path: Path, tokenizer_dir: Path) -> None:
    recipe = write_recipe(tmp_path / "r.toml", tmp_path / "nowhere.txt", tokenizer_dir, tmp_path / "run")
    assert_clear_error(run_cli("train", "--config", str(recipe)), "data file not found", "nowhere.txt")


def test_empty_data_file(tmp_path: Path, tokenizer_dir: Path) -> None:
    (tmp_path / "empty.txt").write_text("  \n")
    recipe = write_recipe(tmp_path / "r.toml", tmp_path / "empty.txt", tokenizer_dir, tmp_path / "run")
    assert_clear_error(run_cli("train", "--config", str(recipe)), "data file is empty", "empty.txt")


def test_unknown_config_key(recipe_file: Path) -> None:
    completed = run_cli("train", "--config", str(recipe_file), "--optim.learning_rate", "1e-3")
    assert_clear_error(completed, "unknown config key 'optim.learning_rate'")


def test_sequence_length_above_the_model_maximum(recipe_file: Path) -> None:
    completed = run_cli("train", "--config", str(recipe_file), "--train.seq_len", "4096")
    assert_clear_error(completed, "sequence length 4096 is above the model's max_seq_len 128")


def test_tokenizer_without_special_tokens(tmp_path: Path, corpus_dir: Path) -> None:
    plain = HFTokenizer(models.BPE())
    plain.pre_tokenizer = pre_tokenizers.ByteLevel()
    plain.train_from_iterator(["just some text"], trainers.BpeTrainer(vocab_size=270))
    (tmp_path / "plain").mkdir()
    plain.save(str(tmp_path / "plain" / "tokenizer.json"))
    recipe = write_recipe(
        tmp_path / "r.toml", corpus_dir / "stories.txt", tmp_path / "plain", tmp_path / "run"
    )
    assert_clear_error(run_cli("train", "--config", str(recipe)), "lacks the special tokens", "<|endoftext|>")


def test_corrupt_checkpoint(tmp_path: Path, recipe_file: Path) -> None:
    cpu = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    from training.config import load_recipe

    checkpoint = Trainer(load_recipe(recipe_file), cpu).run(stop_after=1).checkpoint
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    completed = run_cli("train", "--resume", str(checkpoint))
    assert_clear_error(completed, f"checkpoint {checkpoint} is corrupt", "model.safetensors")
    (checkpoint / "trainer.json").write_text("{not json")
    assert_clear_error(run_cli("export", str(checkpoint), str(tmp_path / "out")), "corrupt", "trainer.json")


def test_ctrl_c_saves_a_checkpoint_that_resumes(tmp_path: Path, recipe_file: Path) -> None:
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "training", "train", "--config", str(recipe_file), "--train.steps", "500"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    state = json.loads((run_dir / "checkpoint" / "trainer.json").read_text())
    step = state["step"]
    assert 2 <= step < 500 and f"interrupted at step {step}" in stdout
    assert not (run_dir / "model").exists()  # an interrupted run exports nothing

    completed = run_cli("train", "--resume", str(run_dir), "--train.steps", str(step + 2))
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert json.loads((run_dir / "checkpoint" / "trainer.json").read_text())["step"] == step + 2
    assert (run_dir / "model" / "model.safetensors").is_file()
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert logged == list(range(1, step + 3))


def test_tokenizer_and_export_commands(tmp_path: Path, corpus_dir: Path, tokenizer_dir: Path) -> None:
    completed = run_cli(
        "tokenizer",
        "--files",
        str(corpus_dir / "stories.txt"),
        "--vocab-size",
        "280",
        "--out",
        str(tmp_path / "t"),
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert (tmp_path / "t" / "tokenizer.json").is_file() and (
        tmp_path / "t" / "tokenizer_config.json"
    ).is_file()
    recipe = recipe_from_dict(tiny_recipe(tmp_path / "run", corpus_dir, tokenizer_dir, steps=2))
    cpu = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    Trainer(recipe, cpu).run(stop_after=1)
    completed = run_cli("export", str(tmp_path / "run"), str(tmp_path / "exported"))
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert {p.name for p in (tmp_path / "exported").iterdir()} >= {
        "config.json",
        "model.safetensors",
        "README.md",
    }
    assert_clear_error(
        run_cli("export", str(tmp_path / "run"), str(tmp_path / "x"), "--swa"), "no SWA weights"
    )
    report = tmp_path / "eval.json"
    completed = run_cli(
        "eval", str(tmp_path / "exported"), "--text", str(corpus_dir / "stories.txt"), "--max-tokens", "100",
        "--seq-len", "32", "--tasks", "arithmetic,counting", "--n", "2", "--max-new-tokens", "4",
        "--recipe", str(Path(__file__).parents[2] / "training/recipes/default.toml"), "--json", str(report),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert (
        "arithmetic (thinking on): " in completed.stdout and "counting (thinking off): " in completed.stdout
    )
    figures = json.loads(report.read_text())
    assert figures["text"]["tokens"] == 100
    assert set(figures["tasks"]) == {
        "arithmetic/think",
        "arithmetic/no_think",
        "counting/think",
        "counting/no_think",
    }
