"""Training of the default image models (``medcloud ai train``); needs the optional ``[train]`` extra
(PyTorch, CPU). Serving never imports this package."""

from medcloud.ai.train.recipes import RECIPES, Recipe, run

__all__ = ["RECIPES", "Recipe", "run"]
