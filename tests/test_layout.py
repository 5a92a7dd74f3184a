"""The package layout of docs/architecture.md: layers depend one way, and old checkpoints still load.

``LAYERS`` is the table of docs/architecture.md: a module may import scoresde modules of a lower
layer, and of its own package; within layer 1 (the maths) modules may import each other; nothing
else.  The test reads every module's imports with ``ast`` (no import side effects) and names each
offending import, so a layering mistake fails with the line to change.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import scoresde

PACKAGE = Path(scoresde.__file__).resolve().parent

LAYERS = {
    "_checks": 0, "_io": 0,
    "sdes": 1, "bridges": 1, "grids": 1, "integrators": 1,
    "samplers": 2, "models": 2, "data": 2, "likelihood": 2, "elbo": 2,
    "evaluation": 3, "guidance": 3, "plotting": 3, "animation": 3,
    "training": 4,
    "apps": 5,
}
SAME_LAYER_OK = {1}  # the maths modules build on each other (sdes <- grids, bridges)


def _unit(parts: list[str]) -> str:
    """The layout unit of a module path inside scoresde: its top-level package or module."""
    return parts[0]


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            yield path, parts


def _imports(path: Path, parts: list[str]):
    """``(line, target parts inside scoresde)`` for every import of a scoresde module in ``path``."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    package = parts if is_pkg else parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "scoresde":
                target = node.module.split(".")[1:]
            else:
                continue
            if node.module is None or not target:  # from . import a, b: each name is a module
                for alias in node.names:
                    yield node.lineno, target + [alias.name]
            else:
                yield node.lineno, target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "scoresde":
                    yield node.lineno, alias.name.split(".")[1:]


def test_every_module_has_a_layer():
    units = {_unit(parts) for _, parts in _modules()}
    assert units <= set(LAYERS), f"modules without a layer in LAYERS (docs/architecture.md): {sorted(units - set(LAYERS))}"


def test_imports_go_one_way():
    bad = []
    for path, parts in _modules():
        source = _unit(parts)
        for line, target in _imports(path, parts):
            if not target:
                continue
            dest = _unit(target)
            if dest == source or dest not in LAYERS:
                continue
            low, high = LAYERS[dest], LAYERS[source]
            if low < high or (low == high and low in SAME_LAYER_OK):
                continue
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({source}, layer {high}) imports "
                       f"{'.'.join(['scoresde', *target])} ({dest}, layer {low})")
    assert not bad, "imports against the layering of docs/architecture.md:\n" + "\n".join(bad)


def test_layering_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The check itself: a sampler importing the training package is reported."""
    fake = tmp_path / "scoresde"
    (fake / "samplers").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "samplers" / "__init__.py").write_text("")
    (fake / "samplers" / "bad.py").write_text("from ..training import train\nfrom .. import sdes\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    with pytest.raises(AssertionError, match=r"bad.py:1 \(samplers, layer 2\) imports scoresde.training"):
        test_imports_go_one_way()


def test_architecture_doc_lists_every_layer():
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for unit in LAYERS:
        assert f"`{unit}" in doc, f"docs/architecture.md does not mention {unit}"


# -- checkpoints written before the move ---------------------------------------------------------

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pre_layout"


@pytest.mark.parametrize("name", ["score_mlp", "precond_mlp", "precond_unet"])
def test_pre_layout_checkpoint_loads_and_scores_identically(name):
    """Checkpoints written by scoresde 0.1 at 705dc9e (tests/fixtures/make_pre_layout_checkpoints.py)
    name their classes by the old module paths (scoresde.nets, scoresde.precond, scoresde.unet);
    they load, and the score on the stored inputs is bit-identical to the one computed then."""
    expected = torch.load(FIXTURES / "expected.pt", weights_only=True)[name]
    raw = torch.load(FIXTURES / name / "last.pt", weights_only=True)
    assert raw["model_class"].startswith(("scoresde.nets.", "scoresde.precond."))  # really an old checkpoint
    loaded = scoresde.load(FIXTURES / name)
    with torch.no_grad():
        score = loaded.score_fn(expected["x"], expected["t"])
    assert torch.equal(score, expected["score"])


def test_old_module_paths_outside_the_table_are_refused():
    from scoresde.models.precond import model_class

    with pytest.raises(ValueError, match="`backbone` 'scoresde.nowhere.Net' does not name"):
        model_class("scoresde.nowhere.Net")
    with pytest.raises(ValueError, match="inside scoresde"):
        model_class("os.path.join")


def test_names_of_the_top_package_stay_importable():
    """``scoresde.load``, ``scoresde.samplers`` and the names of scoresde/__init__.py are where 0.1 had them."""
    import importlib

    from scoresde.toy import eight_gaussians  # noqa: F401
    from scoresde.metrics import evaluate

    assert importlib.import_module("scoresde.metrics") is scoresde.metrics
    assert scoresde.toy is importlib.import_module("scoresde.data.toy")
    assert evaluate is scoresde.evaluation.metrics.evaluate
    for name in scoresde.__all__:
        assert getattr(scoresde, name) is not None
