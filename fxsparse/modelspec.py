"""Turn a model spec string into an ``nn.Module`` (shared by the CLI commands).

Specs:
    ``torchvision:NAME``      a torchvision classification or segmentation model (random weights
                              unless ``weights`` names a state-dict file)
    ``path/to/file.py:NAME``  call ``NAME()`` from a Python file (a factory or an nn.Module class)
    ``builtin:tiny``          a small built-in CNN (no extra package needed)
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch
from torch import nn

from .errors import FxSparseError


class ModelSpecError(FxSparseError, ValueError):
    """The model spec or its weights cannot be used."""


class TinyNet(nn.Module):
    """A small residual CNN, built in so the demo needs no extra package."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        x = self.down(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def load_model(spec: str, weights: str | None = None) -> nn.Module:
    """Build the model named by ``spec`` (see module docstring), in eval mode.

    Raises:
        ModelSpecError: unknown spec, missing file or factory, or weights that do not fit.
    """
    kind, _, name = spec.rpartition(":")
    if kind == "torchvision":
        model = _torchvision_model(name)
    elif kind == "builtin":
        if name != "tiny":
            raise ModelSpecError(f"unknown built-in model {name!r}. Hint: use builtin:tiny.")
        torch.manual_seed(0)
        model = TinyNet()
    elif kind.endswith(".py"):
        model = _from_file(kind, name)
    else:
        raise ModelSpecError(
            f"cannot read model spec {spec!r}. Hint: use torchvision:resnet18, path/to/model.py:factory or builtin:tiny."
        )
    if weights is not None:
        _load_weights(model, weights)
    elif kind == "torchvision":
        warnings.warn(
            f"{spec}: random weights (nothing is downloaded). Speed and exactness do not depend on weights; "
            "for meaningful outputs pass --weights FILE (a state dict).",
            stacklevel=2,
        )
    return model.eval()


def _torchvision_model(name: str) -> nn.Module:
    try:
        import torchvision
    except ImportError as e:
        raise ModelSpecError(
            "torchvision is not installed. Hint: pip install 'fxsparse[vision]' (or use builtin:tiny)."
        ) from e
    torch.manual_seed(0)
    if name in torchvision.models.segmentation.__dict__ and callable(torchvision.models.segmentation.__dict__[name]):
        return torchvision.models.segmentation.__dict__[name](weights=None, weights_backbone=None)
    if name in torchvision.models.__dict__ and callable(torchvision.models.__dict__[name]) and not name[0].isupper():
        return torchvision.models.__dict__[name](weights=None)
    raise ModelSpecError(
        f"torchvision has no model {name!r}. Hint: see torchvision.models.list_models(), e.g. torchvision:resnet18."
    )


def _from_file(path: str, name: str) -> nn.Module:
    if not os.path.isfile(path):
        raise ModelSpecError(f"model file {path!r} does not exist. Hint: give the path to a .py file, then :factory.")
    spec = importlib.util.spec_from_file_location("fxsparse_user_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    factory = getattr(module, name, None)
    if factory is None:
        raise ModelSpecError(f"{path} has no {name!r}. Hint: name a function or nn.Module class defined in it.")
    model = factory()
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"{path}:{name}() returned {type(model).__name__}, not an nn.Module.")
    return model


def _load_weights(model: nn.Module, path: str) -> None:
    if not os.path.isfile(path):
        raise ModelSpecError(f"weights file {path!r} does not exist.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ModelSpecError(
            f"weights {path!r} do not fit the model: {first}. Hint: check that the file belongs to this architecture."
        ) from e
