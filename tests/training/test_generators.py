"""Each generator's checker accepts its own answers and rejects corrupted ones; the traces are right."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from training.config import generator_options, load_recipe
from training.generators import build_generator
from training.generators.arithmetic import ArithmeticGenerator
from training.generators.base import Task, integers, last_integer
from training.generators.counting import CountingGenerator
from training.generators.stories import StoryGenerator

N = 200


def _tasks(generator, n: int = N) -> list[Task]:
    return [generator.sample(random.Random(f"test:{k}")) for k in range(n)]


def _shift_last_number(text: str, delta: int) -> str:
    matches = list(re.finditer(r"-?\d+", text))
    last = matches[-1]
    return text[: last.start()] + str(int(last.group()) + delta) + text[last.end() :]


def test_arithmetic_answers_pass_and_corruptions_fail() -> None:
    generator = ArithmeticGenerator(max_digits=4, multiplier_digits=2)
    tasks = _tasks(generator)
    assert {t.kind for t in tasks} == {"+", "-", "*"}
    for task in tasks:
        a, b = integers(task.prompt.replace("×", " "))[:2]
        if task.prompt.startswith("Subtract"):  # "Subtract b from a"
            a, b = b, a
        assert task.expected == {"+": a + b, "-": a - b, "*": a * b}[task.kind]
        assert last_integer(task.thinking) == task.expected  # the trace ends at the right result
        assert generator.check(task, task.answer)
        assert not generator.check(task, _shift_last_number(task.answer, 1))
        assert not generator.check(task, _shift_last_number(task.answer, -10))
        assert not generator.check(task, "I do not know.")


def test_arithmetic_trace_steps_are_true_single_digit_facts() -> None:
    for task in _tasks(ArithmeticGenerator(max_digits=4, multiplier_digits=2), 60):
        for line in task.thinking.splitlines():
            step = re.search(r"(\d+) ([+×]) (\d+) \+ carry (\d+) = (\d+), write (\d), carry (\d+)", line)
            if step:
                x, op, y, carry, total, digit, out = step.groups()
                value = int(x) + int(y) if op == "+" else int(x) * int(y)
                assert value + int(carry) == int(total)
                assert int(total) % 10 == int(digit) and int(total) // 10 == int(out)


def test_compare_first_decides_the_sign_from_the_digits_it_wrote() -> None:
    """Every subtraction trace opens with the comparison, and the comparison is right."""
    generator = ArithmeticGenerator(max_digits=3, ops=("-",), compare_first=True)
    tasks = _tasks(generator)
    for task in tasks:
        first = task.thinking.splitlines()[0]
        compared = re.fullmatch(r"Compare (\d+) and (\d+): (.*)", first)
        assert compared, first
        a, b = int(compared.group(1)), int(compared.group(2))
        assert a - b == task.expected
        if a == b:
            assert compared.group(3) == "they are equal."
            continue
        assert compared.group(3).endswith(f"so {max(a, b)} is larger.")
        differ = re.search(r"differ are (\d) and (\d)", first)
        if len(str(a)) == len(str(b)):
            first_differing = next((x, y) for x, y in zip(str(a), str(b), strict=True) if x != y)
            assert differ and differ.groups() == first_differing
        else:
            assert not differ and f"{a} has {len(str(a))} digit" in first
        assert ("is smaller than" in task.thinking) == (a < b)
        assert last_integer(task.thinking) == task.expected and generator.check(task, task.answer)
    assert any(t.expected < 0 for t in tasks) and any(t.expected > 0 for t in tasks)
    plain = ArithmeticGenerator(max_digits=3, ops=("-",)).sample(random.Random("test:0"))
    assert not plain.thinking.startswith("Compare")


def test_counting_answers_pass_and_corruptions_fail() -> None:
    generator = CountingGenerator()
    tasks = _tasks(generator)
    assert {t.kind for t in tasks} == {"letters", "items", "compare", "sort"}
    for task in tasks:
        assert generator.check(task, task.answer)
        if task.kind == "sort":
            numbers = integers(task.answer)
            swapped = numbers[1:2] + numbers[:1] + numbers[2:]
            assert not generator.check(task, ", ".join(map(str, swapped)))
            assert numbers == sorted(numbers) or numbers == sorted(numbers, reverse=True)
        elif task.kind == "compare":
            a, b = integers(task.prompt)
            other = b if task.expected == a else a
            word = "larger" if "larger" in task.prompt else "smaller"
            assert task.expected == (max(a, b) if word == "larger" else min(a, b))
            assert not generator.check(task, f"{other} is {word} than {task.expected}.")
        else:
            assert last_integer(task.thinking) == task.expected
            assert not generator.check(task, _shift_last_number(task.answer, 1))
        if task.kind == "letters":
            letter, word = re.search(r"letter '(.)' appear in '(\w+)'", task.prompt).groups()
            assert task.expected == word.count(letter)


def test_story_answers_pass_and_corruptions_fail(corpus_dir: Path) -> None:
    generator = StoryGenerator.from_files([corpus_dir / "stories.txt"])
    for task in _tasks(generator, 50):
        name, words = task.expected["name"], task.expected["words"]
        assert name in task.prompt and all(w in task.prompt for w in words)
        assert all(re.search(rf"\b{w}\b", task.answer) for w in words)  # requested words come from the story
        assert name in task.thinking and task.thinking.startswith("Main character:")
        assert generator.check(task, task.answer)
        assert not generator.check(task, re.sub(rf"\b{name}\b", "someone", task.answer))
        assert not generator.check(task, re.sub(rf"\b{words[0]}\b", "thing", task.answer, flags=re.I))
        assert not generator.check(task, f"{name} {' '.join(words)}.")  # too short to be a story


def test_story_requests_describe_the_character() -> None:
    story = (
        "Once upon a time, in a little pond, there was a very intelligent frog named Fred. Fred loved to hop "
        "and swim with his strong legs. One sunny day, Fred found a shiny pebble near the water. He carried "
        "the pebble home and showed it to his family. Everyone smiled."
    )
    task = StoryGenerator([story, "A story with nobody named in it."]).sample(random.Random(1))
    assert "a very intelligent frog named Fred" in task.prompt
    assert task.answer == story
    with pytest.raises(ValueError, match="names a character"):
        StoryGenerator(["Nobody is named here at all."])


def test_build_generator_refuses_unknown_names_and_options(corpus_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown generator 'poems'"):
        build_generator("poems")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['digits'\]"):
        build_generator("arithmetic", {"digits": 3})
    with pytest.raises(ValueError, match="needs 'paths'"):
        build_generator("stories")
    assert build_generator("stories", {"paths": [corpus_dir / "stories.txt"], "n_words": 2}).n_words == 2


def test_evaluation_samples_the_recipes_generator_options() -> None:
    """`eval --recipe` draws held-out tasks from the distribution the shipped recipe trains on."""
    recipe = load_recipe(Path(__file__).parents[2] / "training/recipes/default.toml")
    options = generator_options(recipe)
    assert options["arithmetic"] == {"max_digits": 3, "ops": ["+", "-"]}
    generator = build_generator("arithmetic", options["arithmetic"])
    tasks = [generator.sample(random.Random(k)) for k in range(300)]
    assert {task.kind for task in tasks} == {"+", "-"}
    assert max(abs(int(n)) for task in tasks for n in re.findall(r"-?\d+", task.prompt)) <= 999
