"""The report as data: sections of text, tables, plots and notes, rendered by ``markdown.py`` and
``html.py`` from the same tree, so report.md and report.html always hold the same content."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass(frozen=True)
class Plot:
    path: Path
    """Absolute path of the PNG; report.md links it relative to the report, report.html inlines it."""
    caption: str


@dataclass(frozen=True)
class Notes:
    items: list[str]


Block = Text | Table | Plot | Notes


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    children: list[Section] = field(default_factory=list)
    anchor: str = ""

    def __bool__(self) -> bool:
        return bool(self.blocks or any(self.children))

    def plots(self) -> list[Plot]:
        own = [b for b in self.blocks if isinstance(b, Plot)]
        return own + [p for child in self.children for p in child.plots()]


@dataclass
class Document:
    title: str
    intro: list[Block]
    sections: list[Section]

    def plots(self) -> list[Plot]:
        return [p for s in self.sections for p in s.plots()]


def slug(text: str) -> str:
    """An HTML id / file-name part: lower case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
