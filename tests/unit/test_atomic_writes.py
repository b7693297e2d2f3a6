"""Every file the library writes goes through a temporary file renamed into place (selfsup.io):
a lint over the source, so a direct write added anywhere fails here."""

from __future__ import annotations

import re
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "src" / "selfsup"
# Calls that write a file directly.
WRITES = re.compile(
    r"\.write_text\(|\.write_bytes\(|open\([^)]*[\"'][wax]b?[\"']|\.savefig\(|np\.save[z]?\(|save_file\("
)
# Where a direct write is the mechanism itself: io.py implements the atomic writes, and the feature
# cache writes into a temporary directory that is renamed into place (eval/cache.py).
MECHANISM = {"io.py", "eval/cache.py"}
# metrics.jsonl is an append-only log: a line torn by a kill is dropped when read, and the file is
# rewritten atomically (cut at the checkpoint's step) when a run restarts.
APPEND_LOGS = {"train/monitor.py": 'path.open("a", buffering=1)'}


def test_every_write_targets_a_temporary_path() -> None:
    offenders = []
    for path in sorted(SOURCE.rglob("*.py")):
        relative = path.relative_to(SOURCE).as_posix()
        if relative in MECHANISM:
            continue
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            # Allowed: a write to the temporary path (on this line, or the `with open(tmp)` above
            # it), and the append-only log.
            allowed = "tmp" in line or "tmp" in lines[number - 2] or APPEND_LOGS.get(relative, "\0") in line
            if WRITES.search(line) and not allowed:
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert not offenders, "write through selfsup.io (write_atomic / write_text_atomic):\n" + "\n".join(
        offenders
    )


def test_the_lint_sees_a_direct_write() -> None:
    assert WRITES.search('(run_dir / "run.json").write_text(text)')
    assert WRITES.search('with open(path, "w") as handle:')
    assert not WRITES.search('with open(path, "rb") as handle:')
