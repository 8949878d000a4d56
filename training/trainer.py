"""The training loop: data, model, optimizer and schedules wired together, with resume and export.

One optimizer step:
    phase, seq_len, lr  <- step (phases by fraction, curriculum, WSD x LeRaC per depth group)
    grad_accum micro-batches from the data stream -> masked cross-entropy, normalised by the step's targets
    clip gradients -> AdamW step -> SWA update (last part of the run)
    log (tqdm, metrics.jsonl), validate every eval_every steps, checkpoint every save_every steps

The same code runs on CPU, on one GPU (bf16 autocast, TF32) and under torchrun with DDP, each rank drawing its
own shard of every source. Resuming restores model, optimizer, data position and RNG, so the losses after a
resume equal those of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from model.config import NanoPrimeConfig
from model.nanoprime import NanoPrime
from model.tokenizer import Tokenizer
from training import checkpointing
from training.config import Recipe, recipe_from_dict
from training.distributed import DistInfo, all_reduce_sum, barrier, broadcast_objects
from training.metrics import MetricsLog, plot_loss_curve
from training.optim import build_optimizer, param_groups
from training.schedules import WSD, Curriculum, LeRaC
from training.sources import Source, SourceContext, build_source
from training.stream import DataStream, rows_to_batch, validation_rows
from training.swa import SWA
from training.tokenizer import train_tokenizer

log = logging.getLogger("training")


@dataclass
class RunResult:
    """What a run did: per-step training losses (global mean), the last validation, where things went."""

    losses: dict[int, float] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    step: int = 0
    interrupted: bool = False
    checkpoint: Path | None = None
    model_dir: Path | None = None


class Trainer:
    def __init__(
        self,
        recipe: Recipe,
        dist: DistInfo,
        resume: str | Path | None = None,
        write: bool = True,
        base_dir: Path | None = None,
        model_factory: Callable[[NanoPrimeConfig], nn.Module] = NanoPrime,
    ):
        """`write=False` (dry run) touches no file; `base_dir` resolves relative data paths (default: cwd).

        `model_factory` lets benchmarks push another model (same call: ids -> (logits, _)) through this exact
        loop; checkpoints and export expect a NanoPrime.
        """
        self.dist = dist
        self.write = write
        self.base_dir = base_dir or Path.cwd()
        self.resume_path = checkpointing.find_checkpoint(resume) if resume is not None else None
        trainer_state: dict[str, Any] = {}
        if self.resume_path is not None:
            trainer_state = checkpointing.read_trainer_state(self.resume_path)
            if trainer_state.get("world_size") != dist.world_size:
                raise ValueError(
                    f"checkpoint {self.resume_path} was written by {trainer_state.get('world_size')} ranks; "
                    f"resume it with the same number (now {dist.world_size})"
                )
        self.recipe = recipe
        self.out_dir = Path(recipe.out_dir)
        self.device = dist.device
        if recipe.train.threads > 0:
            torch.set_num_threads(recipe.train.threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        dtype = recipe.train.dtype
        self.autocast_dtype = (
            torch.bfloat16 if dtype == "bf16" or (dtype == "auto" and self.device.type == "cuda") else None
        )

        self.sources = self._build_sources(dist.rank, dist.world_size)
        self.tokenizer = self._tokenizer()
        config = recipe.model_config(self.tokenizer.vocab_size)
        if self.resume_path is not None and trainer_state.get("model_config") != config.to_dict():
            raise ValueError(
                f"checkpoint {self.resume_path} holds a model with another config than this recipe"
            )
        self.total_steps = recipe.train.steps
        self.curriculum = self._curriculum()
        if self.curriculum.max_len > config.max_seq_len:
            raise ValueError(
                f"sequence length {self.curriculum.max_len} is above the model's max_seq_len "
                f"{config.max_seq_len}"
            )
        opt = recipe.optim
        self.wsd = WSD(
            opt.lr, self.total_steps, opt.warmup_steps, opt.decay_fraction, opt.min_lr_ratio, opt.decay_shape
        )
        self.lerac = (
            LeRaC(
                config.n_layers + 2, round(recipe.lerac.fraction * self.total_steps), recipe.lerac.min_ratio
            )
            if recipe.lerac.enabled
            else None
        )
        self.phase_ends = _cumulative(recipe.phase_steps())

        torch.manual_seed(recipe.seed)
        self.model = model_factory(config).to(self.device)
        if recipe.init_from and self.resume_path is None:
            checkpointing.init_from_model_dir(self._path(recipe.init_from), self.model)
        self.groups = param_groups(self.model, config.n_layers, opt.weight_decay)
        self.optimizer, self.optimizer_note = build_optimizer(
            self.groups, opt.lr, (opt.beta1, opt.beta2), opt.eps, self.device, opt.eight_bit
        )
        self.ddp: nn.Module = self.model
        if dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)

        phases = [(p.name, p.mixture) for p in recipe.phases]
        self.stream = DataStream(
            self.tokenizer, self.sources, phases, recipe.seed, dist.rank, recipe.data.open_rows
        )
        self.val_sets = self._validation_sets()
        self.swa_start = (
            math.floor(recipe.swa.start_fraction * self.total_steps) if recipe.swa.enabled else None
        )
        self.swa: SWA | None = None
        self.step = 0
        self.tokens = 0
        self.elapsed = 0.0
        if self.resume_path is not None:
            self._restore(trainer_state)
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl") if write and dist.is_main else None
        self._stop_requested = False

    # ---- setup helpers -------------------------------------------------------------------------------------
    def _build_sources(self, rank: int, world_size: int) -> dict[str, Source]:
        data = self.recipe.data
        ctx = SourceContext(self.recipe.seed, rank, world_size, data.val_fraction, data.val_docs)
        return {name: build_source(name, spec, ctx, self.base_dir) for name, spec in data.sources.items()}

    def _tokenizer(self) -> Tokenizer:
        if self.resume_path is not None:
            return Tokenizer.load(self.resume_path)
        section = self.recipe.tokenizer
        if section.path or self.recipe.init_from:
            return Tokenizer.load(self._path(section.path or self.recipe.init_from))
        if section.vocab_size <= 0:
            raise ValueError("set tokenizer.path (an existing tokenizer) or tokenizer.vocab_size (train one)")
        text = [None]
        if self.dist.is_main:
            tokenizer = self._train_tokenizer()
            if self.write:
                tokenizer.save(self.out_dir / "tokenizer")
            text = [tokenizer.to_str()]
        broadcast_objects(text)
        return Tokenizer.from_str(text[0])

    def _path(self, path: str) -> Path:
        """A recipe path, relative to base_dir unless absolute."""
        return Path(path) if Path(path).is_absolute() else self.base_dir / path

    def _train_tokenizer(self) -> Tokenizer:
        section = self.recipe.tokenizer
        names = section.sources or list(self.sources)
        unknown = sorted(set(names) - set(self.sources))
        if unknown:
            raise ValueError(f"tokenizer.sources names unknown data source(s) {unknown}")
        full = self._build_sources(0, 1)
        texts: list[str] = []
        for name in names:
            stream = full[name].train_iter(0)
            limit = (
                min(section.max_docs, len(full[name])) if hasattr(full[name], "__len__") else section.max_docs
            )
            texts += [next(stream).as_text() for _ in range(limit)]
        log.info("training a %d-token tokenizer on %d documents", section.vocab_size, len(texts))
        return train_tokenizer(texts, section.vocab_size, delimiter=None)

    def _curriculum(self) -> Curriculum:
        stages = self.recipe.train.curriculum
        if not stages:
            return Curriculum.constant(self.recipe.train.seq_len, self.total_steps)
        return Curriculum(tuple((float(s), int(n)) for s, n in stages), self.total_steps)

    def _validation_sets(self) -> dict[str, list[tuple[list[int], list[int]]]]:
        """Fixed held-out rows per mixed source at the longest curriculum length; ranks split them."""
        used = {name for phase in self.recipe.phases for name in phase.mixture}
        sets = {}
        for name in sorted(used):
            rows = validation_rows(self.tokenizer, self.sources[name].validation(), self.curriculum.max_len)
            rows = rows[: self.recipe.data.val_rows]
            if rows:
                sets[name] = rows[self.dist.rank :: self.dist.world_size]
        return sets

    def _restore(self, state: dict[str, Any]) -> None:
        path = self.resume_path
        checkpointing.load_weights(path, self.model)
        checkpointing.load_optimizer(path, self.optimizer, self.device)
        rank_state = checkpointing.read_rank_state(path, self.dist.rank)
        try:
            self.stream.load_state_dict(rank_state["data"])
            checkpointing.set_rng_state(rank_state["rng"], self.device)
            self.step, self.tokens, self.elapsed = (
                int(state["step"]),
                int(state["tokens"]),
                float(state["elapsed"]),
            )
        except (KeyError, TypeError, RuntimeError) as error:
            raise ValueError(f"checkpoint {path} is corrupt: missing or bad field {error}") from error
        swa_tensors = checkpointing.load_swa(path)
        if swa_tensors is not None and self.swa_start is not None:
            self.swa = SWA(self.model)
            self.swa.load_state_tensors(swa_tensors, int(state.get("swa_count", 0)))
        log.info("resumed from %s at step %d", path, self.step)

    # ---- one step ------------------------------------------------------------------------------------------
    def phase_index(self, step: int) -> int:
        return next((i for i, end in enumerate(self.phase_ends) if step < end), len(self.phase_ends) - 1)

    def learning_rate(self, step: int) -> float:
        return self.wsd(step) * self.recipe.phases[self.phase_index(step)].lr_scale

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self) -> tuple[float, int, float]:
        """One optimizer step; returns (global mean loss, tokens processed by all ranks, base lr)."""
        step = self.step
        self.stream.set_phase(self.phase_index(step))
        seq_len = self.curriculum(step)
        lr = self.learning_rate(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * (self.lerac(group["depth"], step) if self.lerac else 1.0)
        micro = self.recipe.train.micro_batch_size
        batches = [self.stream.next_batch(micro, seq_len) for _ in range(self.recipe.train.grad_accum)]
        targets = sum(float(mask.sum()) for _, _, mask in batches)
        loss_sum = torch.zeros((), device=self.device)
        self.ddp.train()
        for i, (x, y, mask) in enumerate(batches):
            x, y, mask = x.to(self.device), y.to(self.device), mask.to(self.device)
            last = i == len(batches) - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.ddp.no_sync()
            with sync:
                with self._autocast():
                    logits, _ = self.ddp(x)
                token_loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
                batch_loss = (token_loss * mask.flatten()).sum()
                (batch_loss / max(targets, 1.0)).backward()
            loss_sum += batch_loss.detach()
        if self.recipe.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if (
            self.swa_start is not None
            and step >= self.swa_start
            and (step - self.swa_start) % self.recipe.swa.every == 0
        ):
            if self.swa is None:
                self.swa = SWA(self.model)
            self.swa.update(self.model)
        totals = all_reduce_sum(torch.stack([loss_sum, torch.tensor(targets, device=self.device)]))
        tokens = micro * seq_len * len(batches) * self.dist.world_size
        self.step += 1
        self.tokens += tokens
        return float(totals[0] / totals[1].clamp(min=1.0)), tokens, lr

    # ---- validation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Loss per source and overall (token-weighted) on the fixed held-out rows, summed over ranks."""
        self.model.eval()
        batch = self.recipe.train.micro_batch_size
        sums = torch.zeros(len(self.val_sets), 2, device=self.device, dtype=torch.float64)
        for i, rows in enumerate(self.val_sets.values()):
            for start in range(0, len(rows), batch):
                x, y, mask = (t.to(self.device) for t in rows_to_batch(rows[start : start + batch]))
                with self._autocast():
                    logits, _ = self.model(x)
                token_loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
                sums[i, 0] += (token_loss * mask.flatten()).sum().double()
                sums[i, 1] += mask.sum().double()
        all_reduce_sum(sums)
        self.model.train()
        result = {}
        for (name, _), (loss, count) in zip(self.val_sets.items(), sums.tolist(), strict=True):
            if count > 0:
                result[f"val/{name}"] = loss / count
        total_loss, total_count = sums.sum(0).tolist()
        if total_count > 0:
            result["val_loss"] = total_loss / total_count
            result["val_ppl"] = math.exp(min(result["val_loss"], 50.0))
        return result

    # ---- checkpoint and export -----------------------------------------------------------------------------
    def save(self) -> Path:
        path = self.out_dir / "checkpoint"
        trainer_state = {
            "step": self.step,
            "tokens": self.tokens,
            "elapsed": self.elapsed,
            "recipe": self.recipe.raw,
            "model_config": self.model.config.to_dict(),
            "swa_count": self.swa.count if self.swa is not None else 0,
        }
        rank_state = {"data": self.stream.state_dict(), "rng": checkpointing.rng_state(self.device)}
        swa = self.swa.state_tensors() if self.swa is not None else None
        checkpointing.save_checkpoint(
            path, self.dist, self.model, self.optimizer, self.tokenizer, trainer_state, rank_state, swa
        )
        return path

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self._stop_requested:
            if not self.dist.enabled:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            return  # under torchrun the launcher forwards the signal again: keep going to the collective save
        self._stop_requested = True
        log.warning(
            "interrupt: finishing this step, then saving a resumable checkpoint (Ctrl-C again to abort)"
        )

    def _should_stop(self) -> bool:
        flag = torch.tensor([1.0 if self._stop_requested else 0.0], device=self.device)
        return bool(all_reduce_sum(flag).item() > 0)

    # ---- the run -------------------------------------------------------------------------------------------
    def run(self, stop_after: int | None = None, export: bool = True) -> RunResult:
        """Train to train.steps (or `stop_after` more steps), validating, saving and exporting on the way."""
        result = RunResult()
        train = self.recipe.train
        end = self.total_steps if stop_after is None else min(self.total_steps, self.step + stop_after)
        if self.metrics is not None:
            self.metrics.truncate_after(self.step)
        log.info(self.optimizer_note)
        previous_handlers = {
            sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        bar = tqdm(total=end, initial=self.step, disable=not self.dist.is_main, dynamic_ncols=True)
        try:
            while self.step < end:
                started = time.perf_counter()
                loss, tokens, lr = self.train_step()
                duration = time.perf_counter() - started
                self.elapsed += duration
                result.losses[self.step] = loss
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens / duration:,.0f}")
                record: dict[str, Any] = {}
                if self.step % train.log_every == 0 or self.step == end:
                    record = {"step": self.step, "loss": loss, "lr": lr, "tokens": self.tokens}
                    record |= {"tokens_per_s": tokens / duration, "seq_len": self.curriculum(self.step - 1)}
                    record |= {"phase": self.recipe.phases[self.phase_index(self.step - 1)].name}
                if self.step % train.eval_every == 0 or self.step == self.total_steps:
                    result.validation = self.validate()
                    record = (
                        {"step": self.step, "loss": loss, "tokens": self.tokens} | record | result.validation
                    )
                    if self.dist.is_main:
                        tqdm.write(_format_validation(self.step, result.validation))
                if record and self.metrics is not None:
                    self.metrics.write(record)
                    if "val_loss" in record and train.plot:
                        plot_loss_curve(self.metrics.path, self.out_dir / "loss.png")
                if self._should_stop():
                    result.interrupted = True
                    break
                if self.write and train.save_every and self.step % train.save_every == 0 and self.step < end:
                    result.checkpoint = self.save()
        finally:
            bar.close()
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        result.step = self.step
        if not self.write:
            result.validation = result.validation or self.validate()
            return result
        result.checkpoint = self.save()
        if self.metrics is not None and train.plot:
            plot_loss_curve(self.metrics.path, self.out_dir / "loss.png")
        if self.step >= self.total_steps and export and not result.interrupted:
            result.model_dir = self.export(result)
        return result

    def export(self, result: RunResult) -> Path | None:
        """Write the model directory; with SWA, the averaged weights are kept when they validate better."""
        from training.export import export_model_dir

        validation, chosen = self.choose_weights(result.validation or self.validate())
        path = self.out_dir / "model"
        if self.dist.is_main:
            export_model_dir(self.model, self.tokenizer, path, self.card(validation, result, chosen))
        barrier()
        return path

    def choose_weights(self, validation: dict[str, float]) -> tuple[dict[str, float], str]:
        """Leaves the SWA mean in the model when it validates at least as well as the final weights.

        `validation` is that of the final weights; returns the kept weights' validation and their name.
        """
        if self.swa is None or self.swa.count == 0:
            return validation, "final"
        final_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.swa.copy_to(self.model)
        swa_validation = self.validate()
        log.info(
            "validation: final %.4f, SWA mean of %d %.4f",
            validation.get("val_loss", math.nan),
            self.swa.count,
            swa_validation.get("val_loss", math.nan),
        )
        if swa_validation.get("val_loss", math.inf) <= validation.get("val_loss", math.inf):
            return swa_validation, f"SWA mean of the last {self.swa.count} steps"
        self.model.load_state_dict(final_state)
        return validation, "final"

    def card(self, validation: dict[str, float], result: RunResult, weights: str) -> dict[str, Any]:
        """The model card's training story: data and licence, phases, steps, losses."""
        last_loss = result.losses[max(result.losses)] if result.losses else None
        section = self.recipe.card
        return {
            "name": section.name,
            "description": (
                f"Fine-tuned from `{self.recipe.init_from}` with `python -m training train` (NanoPrime)."
                if self.recipe.init_from
                else "Trained with `python -m training train` (NanoPrime)."
            ),
            "data": section.data or ", ".join(sorted(self.recipe.data.sources)),
            "licence": section.licence or "see the licences of the data sources",
            "phases": [
                f"{p.name}: {p.fraction:.0%} of the steps, mixture "
                + ", ".join(f"{name} {weight:g}" for name, weight in p.mixture.items())
                for p in self.recipe.phases
            ],
            "training": {
                "steps": self.step,
                "tokens": self.tokens,
                "final training loss": last_loss,
                "weights": weights,
                "seconds": round(self.elapsed, 1),
                "device": str(self.device),
                "ranks": self.dist.world_size,
            },
            "validation": {k.removeprefix("val/"): v for k, v in validation.items()},
        }


def _cumulative(counts: list[int]) -> list[int]:
    ends, total = [], 0
    for count in counts:
        total += count
        ends.append(total)
    return ends


def _format_validation(step: int, validation: dict[str, float]) -> str:
    parts = [f"{k.removeprefix('val/')} {v:.4f}" for k, v in validation.items() if k.startswith("val/")]
    loss, ppl = validation.get("val_loss", math.nan), validation.get("val_ppl", math.nan)
    head = f"step {step}: val loss {loss:.4f} ppl {ppl:.2f}"
    return head + (f" ({', '.join(parts)})" if parts else "")


def recipe_for_resume(path: str | Path, overrides: dict[str, str]) -> Recipe:
    """The recipe saved in a checkpoint, with new CLI overrides (e.g. more steps) applied."""
    state = checkpointing.read_trainer_state(checkpointing.find_checkpoint(path))
    if not isinstance(state.get("recipe"), dict):
        raise ValueError(f"checkpoint {path} is corrupt: it holds no recipe")
    return recipe_from_dict(state["recipe"], overrides)
