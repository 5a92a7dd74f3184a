"""The tests' sampler parametrisations, derived from one source: ``conf/sampler/*.yaml`` and the
package's exports (``scoresde.samplers.sampler_classes``, ``FAST_SETTINGS``).  No hand-kept list."""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import yaml

from scoresde import samplers

CONF = Path(__file__).resolve().parents[1] / "conf" / "sampler"


def yaml_names() -> list[str]:
    """The options of the Hydra ``sampler`` group: one per yaml file."""
    return sorted(p.stem for p in CONF.glob("*.yaml"))


def _build(node):
    """Instantiate a plain yaml node (``_target_`` + keyword arguments, nested nodes recursively)."""
    if isinstance(node, dict) and "_target_" in node:
        module, _, name = node["_target_"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        kwargs = {k: _build(v) for k, v in node.items() if not k.startswith("_") and k != "defaults"}
        return cls(**kwargs)
    return node


def from_yaml(name: str):
    """The sampler a ``conf/sampler/<name>.yaml`` describes (class defaults + the yaml's own keys)."""
    return _build(yaml.safe_load((CONF / f"{name}.yaml").read_text()))


def fast(sampler):
    """``sampler`` with its class's ``FAST_SETTINGS`` applied (fields it has only)."""
    settings = samplers.FAST_SETTINGS.get(type(sampler).__name__, {})
    names = {f.name for f in dataclasses.fields(sampler)}
    return dataclasses.replace(sampler, **{k: v for k, v in settings.items() if k in names})


def fast_yaml_samplers() -> dict:
    """``yaml name -> fast sampler`` for every ``conf/sampler`` option."""
    return {name: fast(from_yaml(name)) for name in yaml_names()}
