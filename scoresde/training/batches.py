"""Where a training run's batches come from: a data set, a data tensor (with labels), or an iterable.

``batch_source(data, model, device)`` returns ``draw(batch_size, generator) -> (x0 [B, *D], labels
[B] | None)``.  A data set draws with ``sample(n, generator)`` (``sample_with_labels`` for a
conditional model); a tensor is indexed by ``torch.randint`` from the generator (checked once, up
front); an iterable (a ``DataLoader``) yields its own batches, one epoch after another.  Batches
that were not checked up front (data sets, iterables) have their first batch checked for
non-finite values (``DataError``).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..data.datasets import DataError, check_data

__all__ = ["batch_source"]


def batch_source(data, model: nn.Module, device: torch.device):
    """``draw(batch_size, generator) -> (x0, labels | None)`` for ``data`` (module docstring)."""
    draw, check_first = _source(data, model, device)
    if not check_first:
        return draw
    first = True

    def checked(n, g):
        nonlocal first
        x0, labels = draw(n, g)
        if first:
            check_data(x0, "data batch")
            first = False
        return x0, labels

    return checked


def _source(data, model: nn.Module, device: torch.device):
    """``draw(batch_size, generator) -> (x0, labels | None)`` and whether its first batch needs a check."""
    num_classes = getattr(model, "num_classes", 0)
    if torch.is_tensor(data) or (isinstance(data, tuple) and len(data) == 2 and torch.is_tensor(data[0])):
        x, labels = (data, None) if torch.is_tensor(data) else data
        x = check_data(x).to(device)
        if num_classes and labels is None:
            raise ValueError("a conditional model needs labels: pass `data` as (x [N, *D], labels [N])")
        if labels is not None and not num_classes:
            raise ValueError(
                "`data` has labels but the model is unconditional (num_classes=0): pass only x, or build "
                "the model with num_classes > 0 to train on the labels"
            )
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise TypeError(f"`labels` must be an integer tensor [N], got dtype {labels.dtype}")
            labels = labels.to(device=device, dtype=torch.long)
            if labels.shape != x.shape[:1]:
                raise ValueError(f"`labels` must have shape [N] = [{x.shape[0]}], got {tuple(labels.shape)}")
            if num_classes and not bool(((labels >= 0) & (labels < num_classes)).all()):
                raise ValueError(f"`labels` must lie in [0, {num_classes}) for a model with num_classes={num_classes}")

        def draw(n, g):
            idx = torch.randint(x.shape[0], (n,), generator=g, device=device)
            return x[idx], (labels[idx] if num_classes else None)

        return draw, False
    if not callable(getattr(data, "sample", None)) and isinstance(data, Iterable):
        return _iterable_source(data, num_classes, device), True
    if not callable(getattr(data, "sample", None)):
        raise TypeError(
            "`data` must be a tensor [N, *D], a tuple (x [N, *D], labels [N]), an iterable of batches or a data set with "
            f"sample(n, generator), got {type(data).__name__}"
        )
    if num_classes:
        if getattr(data, "num_classes", 0) != num_classes:
            raise ValueError(
                f"the model has num_classes={num_classes} but the data set has {getattr(data, 'num_classes', 0)} labels"
            )
        return (lambda n, g: data.sample_with_labels(n, g)), True
    return (lambda n, g: (data.sample(n, g), None)), True


def _iterable_source(data: Iterable, num_classes: int, device: torch.device):
    """``draw(n, g)`` that returns the next batch of ``data`` (``n`` and ``g`` unused), starting a new epoch at its end."""
    iterator = iter(data)
    one_shot = iterator is data  # a generator or iterator: cannot be restarted

    def draw(n, g):
        nonlocal iterator
        try:
            batch = next(iterator)
        except StopIteration:
            if one_shot:
                raise DataError("`data` (an iterator) ran out of batches before num_steps; pass a re-iterable "
                                "such as a DataLoader or a list of batches") from None
            iterator = iter(data)
            try:
                batch = next(iterator)
            except StopIteration:
                raise DataError("`data` is an empty iterable") from None
        labels = None
        if isinstance(batch, (tuple, list)) and len(batch) == 1:  # DataLoader(TensorDataset(x)) yields [x]
            (batch,) = batch
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            batch, labels = batch
        if not torch.is_tensor(batch):
            raise TypeError(f"each batch of `data` must be a tensor x [B, *D] or a pair (x, labels), got {type(batch).__name__}")
        if num_classes:
            if labels is None:
                raise ValueError("a conditional model needs labels: batches of `data` must be pairs (x, labels)")
            labels = torch.as_tensor(labels).to(device=device, dtype=torch.long)
        return batch.to(device), (labels if num_classes else None)

    return draw
