"""The model card's figures, read back from a model directory's README.md.

model/checkpoint.py renders the card as Markdown: a `# name` title, a description, `| key | value |` tables
under `## Section` headings and `**Key:** value` lines. The UI wants them as figures, so we read that shape
back into a flat mapping ("model.parameters": 207184, "evaluation.loss": 2.31, "seed": 1234). Lines of any
other shape are skipped, so a hand-written README gives whatever figures it has in these forms.
"""

from __future__ import annotations

import re
from pathlib import Path

from model.checkpoint import CARD_FILE

Figure = str | int | float | bool | None

_TABLE_ROW = re.compile(r"^\|\s*(?P<key>[^|]+?)\s*\|\s*(?P<value>.*?)\s*\|$")
_BOLD_LINE = re.compile(r"^\*\*(?P<key>[^*]+?):\*\*\s*(?P<value>.+)$")
_LIST_ITEM = re.compile(r"^[-*]\s+(?P<value>.+)$")
DEFAULT_TITLE = "NanoPrime model"


def read_card(model_dir: Path) -> tuple[str | None, dict[str, Figure]]:
    """(the card's model name, or None when it has the default title; its figures). No card: (None, {})."""
    file = model_dir / CARD_FILE
    if not file.is_file():
        return None, {}
    name: str | None = None
    section = ""
    figures: dict[str, Figure] = {}
    lists: dict[str, list[str]] = {}
    for raw in file.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("# ") and name is None:
            title = line[2:].strip()
            name = None if title == DEFAULT_TITLE else title
        elif line.startswith("## "):
            section = _key(line[3:])
        elif (row := _TABLE_ROW.match(line)) and row["key"].strip(" -:"):
            figures[_join(section, _key(row["key"]))] = _value(row["value"])
        elif bold := _BOLD_LINE.match(line):
            figures[_key(bold["key"])] = _value(bold["value"])
        elif (item := _LIST_ITEM.match(line)) and section:
            lists.setdefault(section, []).append(item["value"].strip())
    figures.update({key: ", ".join(values) for key, values in lists.items()})
    return name, figures


def _key(text: str) -> str:
    return re.sub(r"\s+", "_", text.strip().lower())


def _join(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def _value(text: str) -> Figure:
    """A number when the cell is one (thousands separators allowed), else the text without code ticks."""
    text = text.strip().strip("`").replace("\\|", "|")
    plain = text.replace(",", "")
    for kind in (int, float):
        try:
            return kind(plain)
        except ValueError:
            continue
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text
