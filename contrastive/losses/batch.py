"""The training loss of one rank: the configured loss (chosen by name) over the global batch.

`BatchLoss(loss_cfg, info)` is built once per run and called every step with this rank's features; it gathers the
other ranks' features with autograd (see `distributed`) and scores local rows against all columns, or the whole
gathered batch, as `loss.local_loss` says. A single process computes the plain loss either way.

With `distill` set and a teacher's features passed, the loss is `(1 - w) · contrastive + w · distillation`; the
teacher's features are gathered like the student's (without autograd) and scored the same way (local or whole,
`loss.chunk_size` tiles).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import Tensor

from ..config import DistillConfig, LossConfig
from ..distributed import DistInfo, all_gather_tensor, all_gather_with_grad
from . import LOCAL_LOSSES, LOSSES
from .distill import TeacherFeatures, distill_loss, distill_loss_local


@dataclass(frozen=True)
class BatchLoss:
    """`loss(image, text, logit_scale, logit_bias, image_ids, text_ids) -> 0-dim` for this rank.

    image, text: (b, D) this rank's L2-normalised features (rows rank·b .. rank·b+b-1 of the global batch).
    image_ids, text_ids: (b,) content ids (duplicate-aware targets) or None.
    teacher: a frozen teacher's (b, Dt) features of the same pairs and its 0-dim scale, or None (no distillation).
    Its mean over ranks is the loss of the whole batch.
    """

    cfg: LossConfig
    info: DistInfo = DistInfo()
    distill: DistillConfig | None = None  # how a teacher's features, when passed, enter the loss
    whole: Callable[..., Tensor] = field(init=False)  # the loss of a whole (gathered) batch
    local: Callable[..., Tensor] = field(init=False)  # one rank's rows against all gathered columns

    def __post_init__(self) -> None:
        object.__setattr__(self, "whole", LOSSES[self.cfg.name])
        object.__setattr__(self, "local", LOCAL_LOSSES[self.cfg.name])

    def __call__(self, image: Tensor, text: Tensor, logit_scale: Tensor, logit_bias: Tensor | None,
                 image_ids: Tensor | None = None, text_ids: Tensor | None = None,
                 teacher: TeacherFeatures | None = None) -> Tensor:
        gathered = None  # (all_image, all_text) (N, D) each, gathered once with autograd for both losses
        if self.info.enabled:
            gathered = all_gather_with_grad(image, self.info), all_gather_with_grad(text, self.info)
        loss = self.contrastive(image, text, gathered, logit_scale, logit_bias, image_ids, text_ids)
        if teacher is None or self.distill is None:
            return loss
        w = self.distill.weight
        return (1 - w) * loss + w * self.distillation(image, text, gathered, logit_scale, teacher)

    def contrastive(self, image: Tensor, text: Tensor, gathered: tuple[Tensor, Tensor] | None, logit_scale: Tensor,
                    logit_bias: Tensor | None, image_ids: Tensor | None, text_ids: Tensor | None) -> Tensor:
        chunk = self.cfg.chunk_size or None
        if not self.cfg.duplicate_aware:
            image_ids = text_ids = None
        info = self.info
        if gathered is None:
            ids = {} if image_ids is None else {"image_ids": image_ids, "text_ids": text_ids}
            return self.whole(image, text, logit_scale, logit_bias, chunk_size=chunk, **ids)
        all_image, all_text = gathered  # (N, D)
        all_ids = {}
        if image_ids is not None:
            all_ids = {"image_ids": all_gather_tensor(image_ids, info), "text_ids": all_gather_tensor(text_ids, info)}
        if not self.cfg.local_loss:  # every rank scores the whole gathered (N, N) batch
            return self.whole(all_image, all_text, logit_scale, logit_bias, chunk_size=chunk, **all_ids)
        local_ids = {}
        if all_ids:
            local_ids = {"image_ids": image_ids, "text_ids": text_ids,
                         "all_image_ids": all_ids["image_ids"], "all_text_ids": all_ids["text_ids"]}
        return self.local(image, text, all_image, all_text, logit_scale, logit_bias,
                          offset=info.rank * image.shape[0], chunk_size=chunk, **local_ids)

    def distillation(self, image: Tensor, text: Tensor, gathered: tuple[Tensor, Tensor] | None, logit_scale: Tensor,
                     teacher: TeacherFeatures) -> Tensor:
        """This rank's share of the distillation loss over the global batch (shapes as in `__call__`)."""
        opts = {"temperature": self.distill.temperature, "chunk_size": self.cfg.chunk_size or None}
        if gathered is None:
            return distill_loss(image, text, logit_scale, teacher, **opts)
        all_image, all_text = gathered  # (N, D)
        all_teacher = TeacherFeatures(all_gather_tensor(teacher.image.contiguous(), self.info),
                                      all_gather_tensor(teacher.text.contiguous(), self.info),
                                      teacher.logit_scale)  # (N, Dt) each, no gradient
        if not self.cfg.local_loss:
            return distill_loss(all_image, all_text, logit_scale, all_teacher, **opts)
        return distill_loss_local(image, text, all_image, all_text, logit_scale, teacher, all_teacher, **opts)


def global_batch_loss(image: Tensor, text: Tensor, logit_scale: Tensor, logit_bias: Tensor | None,
                      image_ids: Tensor | None, text_ids: Tensor | None, loss_cfg: LossConfig,
                      info: DistInfo = DistInfo()) -> Tensor:
    """This rank's loss over the global batch, in one call (see `BatchLoss`; shapes there)."""
    return BatchLoss(loss_cfg, info)(image, text, logit_scale, logit_bias, image_ids, text_ids)
