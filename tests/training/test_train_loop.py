"""The training loop on the tiny model: loss falls, resume equals continuous, accumulation, SWA, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from training_helpers import tiny_recipe
from transformers import AutoTokenizer

from model.checkpoint import load_model_dir
from model.modules.bitnet import BitLinear
from training.config import recipe_from_dict
from training.distributed import DistInfo
from training.evaluate import greedy_generate, perplexity, task_accuracy
from training.generators import build_generator
from training.swa import SWA
from training.trainer import Trainer

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def make_trainer(recipe: dict, resume: Path | None = None, write: bool = True) -> Trainer:
    return Trainer(recipe_from_dict(recipe), CPU, resume=resume, write=write)


def test_loss_falls_on_a_small_generated_corpus(
    tmp_path: Path, corpus_dir: Path, tokenizer_dir: Path
) -> None:
    recipe = tiny_recipe(
        tmp_path / "run",
        corpus_dir,
        tokenizer_dir,
        steps=16,
        phases=[{"name": "tasks", "mixture": {"arithmetic": 1.0, "counting": 1.0}}],
        optim={"lr": 1e-2, "warmup_steps": 3},
    )
    trainer = make_trainer(recipe, write=False)
    before = trainer.validate()["val_loss"]
    result = trainer.run()
    losses = list(result.losses.values())
    assert min(losses) > 0  # every batch has targets
    assert sum(losses[-4:]) / 4 < sum(losses[:3]) / 3 - 1.0
    assert result.validation["val_loss"] < before - 1.0
    assert result.validation["val_ppl"] == pytest.approx(
        torch.tensor(result.validation["val_loss"]).exp().item()
    )
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(
    tmp_path: Path, corpus_dir: Path, tokenizer_dir: Path
) -> None:
    sections = {
        "lerac": {"enabled": True, "fraction": 0.5, "min_ratio": 0.1},
        "swa": {"enabled": True, "start_fraction": 0.3},
    }
    train = {"curriculum": [[0, 24], [0.5, 32]]}
    continuous = tiny_recipe(tmp_path / "a", corpus_dir, tokenizer_dir, steps=20, **sections)
    continuous["train"] |= train
    interrupted = json.loads(json.dumps(continuous)) | {"out_dir": str(tmp_path / "b")}

    full = make_trainer(continuous).run(export=False)
    first = make_trainer(interrupted).run(stop_after=10)
    assert first.step == 10 and first.model_dir is None
    resumed_trainer = make_trainer(interrupted, resume=first.checkpoint)
    assert resumed_trainer.step == 10
    second = resumed_trainer.run(export=False)

    assert sorted(second.losses) == list(range(11, 21))
    for step in range(11, 21):
        assert second.losses[step] == pytest.approx(full.losses[step], abs=1e-6), step
    a = torch.load(tmp_path / "a" / "checkpoint" / "optimizer.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint" / "optimizer.pt", weights_only=True)
    assert all(
        torch.allclose(a["state"][k]["exp_avg"], b["state"][k]["exp_avg"], atol=1e-6) for k in a["state"]
    )
    logged = [
        json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    assert logged == list(range(1, 21))  # one clean log across the interruption


def test_gradient_accumulation_matches_a_bigger_batch(
    tmp_path: Path, corpus_dir: Path, tokenizer_dir: Path
) -> None:
    big = tiny_recipe(tmp_path / "big", corpus_dir, tokenizer_dir, steps=3)
    big["train"] |= {"micro_batch_size": 4, "grad_accum": 1}
    accumulated = json.loads(json.dumps(big))
    accumulated["train"] |= {"micro_batch_size": 2, "grad_accum": 2}
    a = make_trainer(big, write=False)
    b = make_trainer(accumulated, write=False)
    a.stream.open_rows = b.stream.open_rows = 1  # rows then come out in the same order whatever the batch
    for _ in range(3):
        loss_a, _, _ = a.train_step()
        loss_b, _, _ = b.train_step()
        assert loss_a == pytest.approx(loss_b, rel=1e-5)
    # Adam moves a weight by lr * g / (|g| + 1e-8): where a gradient is below 1e-8, summing it in another
    # order (4 rows, or 2 + 2) shows up a thousandfold. A wrong accumulation would be off by about lr = 1e-2.
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-4)


def test_gradient_checkpointing_changes_memory_not_results(
    tmp_path: Path, corpus_dir: Path, tokenizer_dir: Path
) -> None:
    plain = tiny_recipe(tmp_path, corpus_dir, tokenizer_dir, steps=2)
    checkpointed = json.loads(json.dumps(plain))
    checkpointed["train"]["gradient_checkpointing"] = True
    a, b = make_trainer(plain, write=False), make_trainer(checkpointed, write=False)
    assert b.model.config.gradient_checkpointing and not a.model.config.gradient_checkpointing
    for _ in range(2):
        assert a.train_step()[0] == pytest.approx(b.train_step()[0], abs=1e-6)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_lerac_rates_per_depth_in_the_loop(tmp_path: Path, corpus_dir: Path, tokenizer_dir: Path) -> None:
    recipe = tiny_recipe(
        tmp_path,
        corpus_dir,
        tokenizer_dir,
        steps=10,
        lerac={"enabled": True, "fraction": 0.5, "min_ratio": 0.01},
    )
    trainer = make_trainer(recipe, write=False)
    trainer.train_step()
    base = trainer.learning_rate(0)
    deepest = trainer.model.config.n_layers + 1
    rates = {g["depth"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert rates[0] == pytest.approx(base)
    assert rates[deepest] == pytest.approx(base * 0.01)
    for _ in range(5):
        trainer.train_step()
    assert all(g["lr"] == pytest.approx(trainer.learning_rate(5)) for g in trainer.optimizer.param_groups)


def test_swa_is_the_mean_of_the_iterates() -> None:
    model = torch.nn.Linear(3, 2)
    swa = SWA(model)
    snapshots = []
    for value in (1.0, 2.0, 6.0):
        with torch.no_grad():
            model.weight.fill_(value)
        swa.update(model)
        snapshots.append(model.weight.detach().clone())
    swa.copy_to(model)
    assert torch.allclose(model.weight, torch.stack(snapshots).mean(0))


def test_export_load_generate_and_evaluate(tmp_path: Path, corpus_dir: Path, tokenizer_dir: Path) -> None:
    recipe = tiny_recipe(
        tmp_path, corpus_dir, tokenizer_dir, steps=4, swa={"enabled": True, "start_fraction": 0.5}
    )
    recipe["card"] = {"name": "tiny test model", "licence": "CC0"}
    recipe["train"] |= {"plot": True, "eval_every": 2}
    trainer = make_trainer(recipe)
    result = trainer.run()
    model_dir = tmp_path / "model"
    assert result.model_dir == model_dir
    assert (tmp_path / "loss.png").stat().st_size > 1000
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [2, 4]
    assert {"loss", "lr", "tokens_per_s", "seq_len"} <= set(records[0])

    model, tokenizer = load_model_dir(model_dir)
    ids = torch.tensor([tokenizer.encode("Once upon a time, there was a dog named Max.")])
    with torch.no_grad():
        trainer.model.eval()
        expected, _ = trainer.model(ids)
        loaded, _ = model(ids)
    assert torch.allclose(loaded, expected, atol=1e-4)  # the exported weights are the trained ones

    prompt = tokenizer.encode_chat([{"role": "user", "content": "What is 2 + 3?"}])
    outputs = greedy_generate(
        model, [prompt, prompt[:5]], max_new_tokens=12, stop_ids={tokenizer.end_of_turn_id}
    )
    assert all(len(o) <= 12 for o in outputs) and len(outputs[0]) > 0
    manual, state = [], model.new_state(1)  # a plain decode loop over forward(state) agrees
    with torch.no_grad():
        logits, state = model(torch.tensor([prompt]), state)
        for _ in range(len(outputs[0])):
            manual.append(int(logits[0, -1].argmax()))
            logits, state = model(torch.tensor([[manual[-1]]]), state)
    assert manual == outputs[0]
    assert isinstance(tokenizer.decode(outputs[0]), str)

    card = (model_dir / "README.md").read_text()
    assert "tiny test model" in card and "CC0" in card and "steps" in card
    assert AutoTokenizer.from_pretrained(model_dir).apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    ) == tokenizer.render_chat([{"role": "user", "content": "hi"}])

    score = task_accuracy(
        model, tokenizer, build_generator("arithmetic"), n=3, thinking=False, max_new_tokens=6
    )
    assert score.total == 3 and 0 <= score.correct <= 3
    ppl = perplexity(model, tokenizer, corpus_dir / "stories.txt", seq_len=32, max_tokens=200)
    assert ppl["tokens"] == 200 and ppl["perplexity"] > 1


def test_init_from_starts_at_the_exported_model_and_fine_tunes_it(
    tmp_path: Path, corpus_dir: Path, tokenizer_dir: Path
) -> None:
    base = make_trainer(tiny_recipe(tmp_path / "base", corpus_dir, tokenizer_dir, steps=6))
    model_dir = base.run().model_dir
    served, tokenizer = load_model_dir(model_dir)

    recipe = tiny_recipe(tmp_path / "tuned", corpus_dir, tokenizer_dir, steps=6)
    recipe["init_from"] = str(model_dir)
    del recipe["tokenizer"]  # the tokenizer comes with the model directory
    tuned = make_trainer(recipe)
    assert tuned.tokenizer.to_str() == tokenizer.to_str()
    layers = dict(served.named_modules())
    for name, module in tuned.model.named_modules():
        if isinstance(module, BitLinear):  # the same ternary matrices, scales equal to within rounding
            expected = layers[name].quantized_weight()
            assert torch.allclose(module.quantized_weight(), expected, rtol=1e-6, atol=0)
    ids = torch.tensor([tokenizer.encode("Once upon a time, there was a dog named Max.")])
    with torch.no_grad():
        tuned.model.eval()
        assert torch.allclose(tuned.model(ids)[0], served(ids)[0], atol=1e-2)
        fresh = make_trainer(tiny_recipe(tmp_path / "fresh", corpus_dir, tokenizer_dir, steps=6), write=False)
        assert not torch.allclose(fresh.model(ids)[0], served(ids)[0], atol=1e-2)
    tuned.model.train()
    result = tuned.run()
    assert set(result.losses) == set(range(1, 7))  # a fresh run of its own steps, not a resume
    assert f"Fine-tuned from `{model_dir}`" in (result.model_dir / "README.md").read_text()

    other = tiny_recipe(tmp_path / "wide", corpus_dir, tokenizer_dir, steps=6, model={"d_model": 96})
    other["init_from"] = str(model_dir)
    with pytest.raises(ValueError, match="another config"):
        make_trainer(other, write=False)
