"""Run by test_train_ddp.py under torchrun: train from a JSON recipe, then record what each rank holds."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from training.config import recipe_from_dict
from training.distributed import init_distributed, shutdown
from training.trainer import Trainer


def digest(tensors: list[torch.Tensor]) -> str:
    hasher = hashlib.sha256()
    for tensor in tensors:
        hasher.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()


def main() -> None:
    recipe = recipe_from_dict(json.loads(Path(sys.argv[1]).read_text()))
    out = Path(sys.argv[2])
    dist = init_distributed("cpu")
    trainer = Trainer(recipe, dist)
    first_batch = trainer.stream.next_batch(recipe.train.micro_batch_size, recipe.train.seq_len)[0]
    result = trainer.run()
    report = {
        "weights": digest(list(trainer.model.parameters())),
        "first_batch": digest([first_batch]),
        "losses": result.losses,
        "backend": torch.distributed.get_backend(),
        "world_size": dist.world_size,
    }
    (out / f"rank{dist.rank}.json").write_text(json.dumps(report))
    shutdown()


if __name__ == "__main__":
    main()
