"""The README's reliability table, from the fault matrix's recorded results (never by hand).

    python -m tests.faults.table            print the table of the last run
    python -m tests.faults.table --readme   replace the table in README.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / ".sandbox" / "reliability" / "results.json"
START, END = "<!-- reliability-table:start -->", "<!-- reliability-table:end -->"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def markdown_table(rows: list[dict]) -> str:
    lines = ["| case | what was injected | what the tool did | invariants held |", "|---|---|---|---|"]
    lines += [f"| {_cell(r['case'])} | {_cell(r['injected'])} | {_cell(r['did'])} | {r['held']} |" for r in rows]
    return "\n".join(lines) + "\n"


def write_readme(rows: list[dict], readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{markdown_table(rows)}{END}{tail}")


if __name__ == "__main__":
    rows = json.loads(RESULTS.read_text())
    if "--readme" in sys.argv:
        write_readme(rows)
    else:
        print(markdown_table(rows), end="")
