"""The README quotes the committed benchmark report, figure for figure."""

from __future__ import annotations

import json
from pathlib import Path

from bench.report import README_BEGIN, README_END, readme_block

ROOT = Path(__file__).resolve().parents[2]


def test_readme_figures_are_the_committed_reports() -> None:
    summary = json.loads((ROOT / "bench" / "results" / "bench.json").read_text())["summary"]
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(README_BEGIN), readme.index(README_END) + len(README_END)
    assert readme[start:end] == readme_block(summary), (
        "README.md's benchmark figures differ from bench/results/bench.json: rerun `make bench`")
