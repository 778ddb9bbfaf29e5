"""`contrastive.train.train(cfg)`: the training entry point, kept at its historical path (the recipe and its
parts live in `contrastive.training`)."""

from .errors import RunError
from .training.recipe import ContrastiveRecipe, train
from .training.step import compute_loss, train_step

__all__ = ["ContrastiveRecipe", "RunError", "compute_loss", "train", "train_step"]
