"""Schedules at chosen steps, LeRaC parameter groups, and recipe parsing."""

from __future__ import annotations

import math

import pytest

from model.config import preset
from model.nanoprime import NanoPrime
from training.config import parse_value, recipe_from_dict
from training.optim import param_groups, parameter_depth
from training.schedules import WSD, Curriculum, LeRaC


def test_wsd_values_at_chosen_steps() -> None:
    wsd = WSD(peak=1e-3, total_steps=100, warmup_steps=10, decay_fraction=0.2, min_ratio=0.1)
    assert wsd(0) == pytest.approx(1e-4)  # (0 + 1) / 10 of the peak
    assert wsd(4) == pytest.approx(5e-4)
    assert wsd(9) == pytest.approx(1e-3)
    assert wsd(10) == wsd(50) == wsd(79) == pytest.approx(1e-3)  # stable
    assert wsd(80) == pytest.approx(1e-3 * (0.1 + 0.9 * (1 - 1 / 20)))  # decay starts at step 80
    assert wsd(89) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert wsd(99) == pytest.approx(1e-4)  # ends at min_ratio * peak
    cosine = WSD(1e-3, 100, 0, 0.2, 0.0, "cosine")
    assert cosine(89) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    sqrt = WSD(1e-3, 100, 0, 0.2, 0.0, "sqrt")
    assert sqrt(84) == pytest.approx(1e-3 * (1 - math.sqrt(0.25)))
    with pytest.raises(ValueError, match="exceed"):
        WSD(1e-3, 10, warmup_steps=9, decay_fraction=0.5)


def test_curriculum_values_at_chosen_steps() -> None:
    curriculum = Curriculum(((0.0, 256), (0.3, 512), (0.6, 1024)), total_steps=1000)
    assert [curriculum(s) for s in (0, 299, 300, 599, 600, 999)] == [256, 256, 512, 512, 1024, 1024]
    assert curriculum.max_len == 1024
    assert Curriculum.constant(128, 10)(9) == 128
    with pytest.raises(ValueError, match="start with a stage at fraction 0"):
        Curriculum(((0.5, 256),), 10)


def test_lerac_multipliers_converge_to_one() -> None:
    lerac = LeRaC(depths=6, steps=100, min_ratio=0.01)
    assert lerac(0, 0) == pytest.approx(1.0)  # the embedding side starts at the base rate
    assert lerac(5, 0) == pytest.approx(0.01)  # the deepest group starts at min_ratio
    assert lerac(5, 50) == pytest.approx(0.1)  # geometric: halfway in log space
    assert lerac(1, 0) > lerac(2, 0) > lerac(3, 0) > lerac(4, 0) > lerac(5, 0)
    assert lerac(3, 100) == lerac(5, 1000) == 1.0


def test_lerac_groups_follow_model_depth() -> None:
    model = NanoPrime(preset("tiny"))
    n_layers = model.config.n_layers
    assert parameter_depth("embed.weight", n_layers) == 0
    assert parameter_depth("layers.2.mixer.q_proj.weight", n_layers) == 3
    assert parameter_depth("norm.weight", n_layers) == n_layers + 1
    groups = param_groups(model, n_layers, weight_decay=0.1)
    assert sorted({g["depth"] for g in groups}) == list(range(n_layers + 2))
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) == len(list(model.parameters()))  # tied head counted once
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for param in group["params"]:
            decays = param.dim() >= 2 and not names[id(param)].endswith(("A_log", ".D", "dt_bias"))
            assert group["weight_decay"] == (0.1 if decays else 0.0), names[id(param)]
            assert group["depth"] == parameter_depth(names[id(param)], n_layers)


def test_recipe_parsing_overrides_and_unknown_keys() -> None:
    base = {
        "data": {"sources": {"s": {"type": "text", "paths": ["x.txt"]}}},
        "phases": [{"mixture": {"s": 1.0}}],
    }
    recipe = recipe_from_dict(base, {"optim.lr": "1e-4", "train.curriculum": "[[0, 64], [0.5, 128]]"})
    assert recipe.optim.lr == 1e-4 and recipe.train.curriculum == [[0, 64], [0.5, 128]]
    assert parse_value("true") is True and parse_value("runs/x") == "runs/x"
    with pytest.raises(ValueError, match="unknown config key 'optim.lrr'"):
        recipe_from_dict(base, {"optim.lrr": "1"})
    with pytest.raises(ValueError, match="'train.steps' must be int"):
        recipe_from_dict(base, {"train.steps": "ten"})
    with pytest.raises(ValueError, match="unknown data source"):
        recipe_from_dict(base | {"phases": [{"mixture": {"nope": 1.0}}]})
    two_phase = recipe_from_dict(
        base
        | {
            "phases": [
                {"name": "a", "fraction": 0.7, "mixture": {"s": 1}},
                {"name": "b", "mixture": {"s": 1}},
            ]
        },
        {"train.steps": "11"},
    )
    assert two_phase.phase_steps() == [8, 3]
    config = recipe.model_config(vocab_size=300)
    assert config.vocab_size == 320  # the tokenizer's size rounded up to a multiple of 64
    with pytest.raises(ValueError, match=r"\[model\] unknown config key 'd_modl'"):
        recipe_from_dict(base | {"model": {"preset": "tiny", "d_modl": 3}}).model_config(300)
