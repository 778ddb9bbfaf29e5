"""The frozen teacher of a distillation run (`distill.teacher`): its features of each training batch.

The teacher is whatever `contrastive.load` takes (a run directory, a checkpoint, a transformers directory), with its
own preprocessing and tokenizer. It runs in eval mode under `torch.no_grad`, never in the optimizer, and is not
saved with the student's checkpoints.

How the teacher sees a batch:
- Captions: the batch's caption strings are tokenized again with the teacher's tokenizer (in the main process; a
  batch of 128 short captions is a millisecond).
- Images: the teacher sees the student's own augmented crop. The student's pixels are un-normalised with the
  student's mean/std, resized on the device to the teacher's resolution (bicubic, antialiased, as the loader's
  resize) when the two differ, and normalised with the teacher's mean/std. The pair the student is taught about is
  then exactly the pair the teacher scored (a second decode with its own random crop would teach the student the
  teacher's view of another crop), and it costs one fused multiply-add, nothing in the loader. At equal resolution
  it is exact; a teacher of higher resolution sees the student's crop upsampled, without the detail of the file.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import DistillConfig, ModelConfig
from ..data.samples import trim_padding
from ..errors import ConfigError, UserError, error_line
from ..model import autocast_context
from ..losses.distill import TeacherFeatures


class TeacherView:
    """Student pixels (B, 3, S, S), normalised with the student's mean/std -> the teacher's (B, 3, St, St)."""

    def __init__(self, student: ModelConfig, size: int, mean: list[float], std: list[float]) -> None:
        self.size = size
        s_mean, s_std = torch.tensor(student.image_mean), torch.tensor(student.image_std)
        t_mean, t_std = torch.tensor(mean), torch.tensor(std)
        self.resize = size != student.image_size
        # x_t = (x_s · std_s + mean_s − mean_t) / std_t, as one multiply-add per channel (3, 1, 1) when no resize
        self.s_mean, self.s_std = s_mean.view(3, 1, 1), s_std.view(3, 1, 1)
        self.t_mean, self.t_std = t_mean.view(3, 1, 1), t_std.view(3, 1, 1)
        self.identity = not self.resize and torch.equal(s_mean, t_mean) and torch.equal(s_std, t_std)

    def __call__(self, pixels: Tensor) -> Tensor:
        if self.identity:
            return pixels
        dev = pixels.device
        if not self.resize:
            scale = self.s_std / self.t_std  # (3, 1, 1)
            return torch.addcmul(((self.s_mean - self.t_mean) / self.t_std).to(dev), pixels, scale.to(dev))
        unit = torch.addcmul(self.s_mean.to(dev), pixels, self.s_std.to(dev))  # (B, 3, S, S) in [0, 1]
        unit = F.interpolate(unit, size=(self.size, self.size), mode="bicubic", antialias=True,
                             align_corners=False).clamp_(0, 1)  # (B, 3, St, St)
        return (unit - self.t_mean.to(dev)) / self.t_std.to(dev)


class Teacher:
    """`teacher(batch) -> TeacherFeatures` of this rank's batch ("pixels" (b, 3, S, S) and "captions")."""

    def __init__(self, cfg: DistillConfig, student: ModelConfig, device: torch.device, precision: str) -> None:
        from ..interop.loading import load

        try:
            model, preprocess, tokenizer = load(cfg.teacher)
        except (UserError, OSError) as e:  # a wrong path or an unreadable teacher: one line naming the key
            raise ConfigError(f"distill.teacher={cfg.teacher}: {error_line(e)}") from None
        self.model = model.requires_grad_(False).eval().to(device)
        self.tokenizer, self.device, self.precision = tokenizer, device, precision
        size = getattr(preprocess, "size", student.image_size)
        self.view = TeacherView(student, size, getattr(preprocess, "mean", student.image_mean),
                                getattr(preprocess, "std", student.image_std))

    def tokens(self, captions: list[str]) -> Any:
        tokens = trim_padding(self.tokenizer(captions), getattr(self.tokenizer, "pad_token_id", None))
        if isinstance(tokens, dict):
            return {k: v.to(self.device, non_blocking=True) for k, v in tokens.items()}
        return tokens.to(self.device, non_blocking=True)  # (b, T)

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any]) -> TeacherFeatures:
        with autocast_context(self.device, self.precision):
            out = self.model(self.view(batch["pixels"]), self.tokens(batch["captions"]))
        return TeacherFeatures(out.image_embeds, out.text_embeds, out.logit_scale.detach())  # (b, Dt) x2, ()

    def describe(self, source: str) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        view = "the student's pixels" if self.view.identity else (
            f"the student's crop at {self.view.size} px" if self.view.resize else "the student's pixels renormalised")
        return f"distill: teacher {source} ({n:,} parameters, frozen), sees {view}"
