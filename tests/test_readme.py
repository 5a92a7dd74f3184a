"""Issue 10 item 14: every Python block of README.md runs as written, each on its own.

Each ```python block is executed in a fresh namespace (so a block that relies on names from an
earlier one fails here) in a temporary working directory (blocks may write files such as
``samples.png``).  ``bash`` blocks are checked for the install line only.
"""
from __future__ import annotations

import re

import pytest

from test_apps import REPO

README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    code = compile(BLOCKS[index], f"README.md python block {index}", "exec")
    exec(code, {"__name__": "__readme__"})


def test_readme_install_commands_are_editable():
    for line in re.findall(r"pip install [^\n`]*", README):
        if '".[' in line:
            assert "pip install -e" in line, line
