"""report.md: the document as GitHub-flavoured Markdown, plots linked relative to the report."""

from __future__ import annotations

import os
from pathlib import Path

from selfsup.report.document import Block, Document, Notes, Plot, Section, Table, Text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in table.headers) + " |", "|" + "---|" * len(table.headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    if table.caption:
        lines += ["", f"*{table.caption}*"]
    return lines


def _block(block: Block, base: Path) -> list[str]:
    if isinstance(block, Text):
        return [block.text]
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Plot):
        link = Path(os.path.relpath(block.path, base)).as_posix()
        return [f"![{_cell(block.caption)}]({link})"]
    if isinstance(block, Notes):
        return [f"- {item}" for item in block.items]
    raise TypeError(f"unknown block {block!r}")


def _section(section: Section, level: int, base: Path) -> list[str]:
    lines = ["", "#" * min(level, 6) + " " + section.title]
    for block in section.blocks:
        lines += ["", *_block(block, base)]
    for child in section.children:
        lines += _section(child, level + 1, base)
    return lines


def render_markdown(document: Document, base: Path) -> str:
    """The Markdown text; ``base`` is the directory report.md is written to (for the PNG links)."""
    lines = [f"# {document.title}"]
    for block in document.intro:
        lines += ["", *_block(block, base)]
    for section in document.sections:
        lines += _section(section, 2, base)
    return "\n".join(lines) + "\n"
