"""Story requests built backwards from a story corpus.

For a story such as "... a little dog named Max ... found a ball ...", the request names what the story
contains ("Write a story about a little dog named Max. Use the words ball and park."), the thinking is a short
plan (character, words to use, how it starts and ends) and the answer is the story itself. The checker asks of
any answer what the request asked: the name and every requested word present, and a story-sized text.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

from training.generators.base import Task, join_words

_NAMED = re.compile(r"\b(?:a|an)\s+((?:[a-z]+\s+){0,2}[a-z]+)\s+named\s+([A-Z][a-z]+)\b")
_WORD = re.compile(r"[A-Za-z]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_STOPWORDS_TEXT = """
    about above after again against all also always and any around away back because been before being
    below between both but came come could did does doing down during each every from further going good
    had has have having her here hers herself him himself his home how into its itself just know like little
    look made make many more most much must never next once only other our ours ourselves out over own
    said same saw say says she should some something soon still such than that the their theirs them
    themselves then there these they thing things this those through time too under until upon very
    want wanted was were what when where which while who whom why will with would your yours yourself
    yourselves named called one day went very felt feel could lived loved happy big play played"""
STOPWORDS = set(_STOPWORDS_TEXT.split())
_PROMPTS = [
    "Write a story about {who}. Use the words {words}.",
    "Tell me a short story about {who} that uses the words {words}.",
    "Can you write a story about {who}? Please include the words {words}.",
]


class StoryGenerator:
    """Story requests from stories that name a character; `stories` is the corpus (texts, one story each)."""

    name = "stories"

    def __init__(self, stories: list[str], n_words: int = 3, min_words: int = 20):
        self.n_words = n_words
        self.min_words = min_words
        self.usable = [plan for plan in (_analyse(s) for s in stories) if plan is not None]
        if not self.usable:
            raise ValueError("story generator: no story in the corpus names a character ('a dog named Max')")

    @classmethod
    def from_files(
        cls, paths: list[str | Path], delimiter: str = "<|endoftext|>", **options
    ) -> StoryGenerator:
        stories = []
        for path in paths:
            path = Path(path)
            if not path.is_file():
                raise ValueError(f"story generator: story file not found: {path}")
            stories += [s.strip() for s in path.read_text(encoding="utf-8").split(delimiter) if s.strip()]
        if not stories:
            raise ValueError(f"story generator: no stories in {', '.join(str(p) for p in paths)}")
        return cls(stories, **options)

    def sample(self, rng: random.Random) -> Task:
        story, descriptor, name, candidates = rng.choice(self.usable)
        words = sorted(rng.sample(candidates, min(self.n_words, len(candidates))), key=candidates.index)
        who = f"{_article(descriptor)} {descriptor} named {name}"
        prompt = rng.choice(_PROMPTS).format(who=who, words=join_words(words))
        sentences = [s.strip() for s in _SENTENCE.split(story) if s.strip()]
        plan = [
            f"Main character: {name}, {_article(descriptor)} {descriptor}.",
            f"Words to use: {join_words(words)}.",
            f"Start: {_shorten(sentences[0])}",
            f"End: {_shorten(sentences[-1])}",
        ]
        return Task(
            self.name,
            "story",
            prompt,
            "\n".join(plan),
            story,
            expected={"name": name, "words": words},
        )

    def check(self, task: Task, answer: str) -> bool:
        """The answer names the character, uses every requested word and is at least min_words long."""
        found = {w.lower() for w in _WORD.findall(answer)}
        if len(_WORD.findall(answer)) < self.min_words or task.expected["name"].lower() not in found:
            return False
        return all(word.lower() in found for word in task.expected["words"])


def _analyse(story: str) -> tuple[str, str, str, list[str]] | None:
    """(story, descriptor, name, candidate words) for a story with 'a/an <descriptor> named <Name>'."""
    match = _NAMED.search(story)
    if match is None:
        return None
    descriptor, name = " ".join(match.group(1).split()), match.group(2)
    taken = {w.lower() for w in descriptor.split()} | {name.lower()}
    counts = Counter(w for w in _WORD.findall(story) if w.islower())
    candidates = [w for w in counts if len(w) >= 4 and w not in STOPWORDS and w not in taken]
    if len(candidates) < 2:
        return None
    return story, descriptor, name, candidates


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def _shorten(sentence: str, limit: int = 90) -> str:
    return sentence if len(sentence) <= limit else sentence[:limit].rsplit(" ", 1)[0] + " ..."
