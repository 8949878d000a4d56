"""Two-process DDP over gloo with torchrun: each rank trains on its own shard; the weights end equal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from training_helpers import tiny_recipe

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_rank_gloo_run_ends_with_identical_weights(
    tmp_path: Path, corpus_dir: Path, tokenizer_dir: Path
) -> None:
    recipe = tiny_recipe(tmp_path / "run", corpus_dir, tokenizer_dir, steps=4)
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    completed = subprocess.run(
        [*command, str(WORKER), str(tmp_path / "recipe.json"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["backend"] == "gloo" and ranks[0]["world_size"] == 2
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the replicas identical
    assert ranks[0]["first_batch"] != ranks[1]["first_batch"]  # each rank read its own shard
    assert ranks[0]["losses"] == ranks[1]["losses"]  # the logged loss is the global mean
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()  # rank 0 exported
    assert (tmp_path / "run" / "checkpoint" / "rank1.json").is_file()  # each rank saved its data position
