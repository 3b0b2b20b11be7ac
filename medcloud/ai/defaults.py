"""The default image models shipped inside the package (``medcloud/ai/models/*.zip``), registered and
activated at start when the registry has no model of their name.

Cheap on every start after the first: one listing query per shipped name; a package is read and
checked (ONNX checker, ONNX Runtime load) only when it is about to be registered. A site that
registers its own version of a name keeps it: a default never replaces a registered model. Two
replicas starting at once may both try; the registry's unique key makes one of them a no-op.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from medcloud.ai import package as packages
from medcloud.ai.registry import ModelVersion, Registry
from medcloud.errors import Conflict

log = logging.getLogger(__name__)

DEFAULT_MODELS = {"brain-mri": "brain-mri-1.1.0.zip", "pneumonia": "pneumonia-1.1.0.zip"}


def shipped(name: str) -> Path:
    """The path of a shipped default package (inside the installed medcloud package)."""
    return Path(str(resources.files("medcloud.ai").joinpath("models", DEFAULT_MODELS[name])))


def ensure_default_models(registry: Registry) -> list[ModelVersion]:
    """Register + activate each shipped model whose name has no registered version; returns those added."""
    added = []
    for name in DEFAULT_MODELS:
        if registry.list(name):
            continue
        path = shipped(name)
        if not path.is_file():
            log.warning("default model %s is not shipped in this installation (%s)", name, path)
            continue
        try:
            added.append(registry.register(packages.read(path), activate=True, by="medcloud (default model)"))
        except Conflict:  # another replica registered it first
            continue
        log.info("registered default model %s %s", name, added[-1].version)
    return added
