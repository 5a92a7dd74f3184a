"""Every python block of docs/tutorial.md runs as written (fresh namespace, in a temporary directory with
``docs/tutorial/`` for its figure) and its ``assert`` (the step's number against its closed form) holds."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
BLOCKS = re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(), flags=re.S)


def test_tutorial_has_the_seven_steps():
    assert len(BLOCKS) == 7


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"step{i + 1}" for i in range(len(BLOCKS))])
def test_tutorial_block_runs_and_checks_its_number(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs" / "tutorial").mkdir(parents=True)
    exec(compile(BLOCKS[index], f"docs/tutorial.md block {index + 1}", "exec"), {"__name__": "__tutorial__"})
    assert list((tmp_path / "docs" / "tutorial").glob("*.png")), "each step saves its figure"
