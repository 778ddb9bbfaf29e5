"""Training: the recipe (`ContrastiveRecipe`, `train`) and its parts — the step with gradient caching (`step`),
progress / RNG / checkpoint state (`state`), metrics (`logging`), run directories (`run_dir`), guards against
non-finite steps and failed writes (`guards`), graceful stops (`signals`), AdamW and the schedule (`optim`), what
to train in pretrained towers (`finetune`) and the set-up of device, text and model (`setup`)."""

from .recipe import ContrastiveRecipe, EvalSet, train
from .state import ModelStateHook, Progress
from .step import compute_loss, train_step

__all__ = ["ContrastiveRecipe", "EvalSet", "ModelStateHook", "Progress", "compute_loss", "train", "train_step"]
