"""The training loss of one rank: the configured loss (chosen by name) over the global batch.

`BatchLoss(loss_cfg, info)` is built once per run and called every step with this rank's features; it gathers the
other ranks' features with autograd (see `distributed`) and scores local rows against all columns, or the whole
gathered batch, as `loss.local_loss` says. A single process computes the plain loss either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import Tensor

from ..config import LossConfig
from ..distributed import DistInfo, all_gather_tensor, all_gather_with_grad
from . import LOCAL_LOSSES, LOSSES


@dataclass(frozen=True)
class BatchLoss:
    """`loss(image, text, logit_scale, logit_bias, image_ids, text_ids) -> 0-dim` for this rank.

    image, text: (b, D) this rank's L2-normalised features (rows rank·b .. rank·b+b-1 of the global batch).
    image_ids, text_ids: (b,) content ids (duplicate-aware targets) or None.
    Its mean over ranks is the loss of the whole batch.
    """

    cfg: LossConfig
    info: DistInfo = DistInfo()
    whole: Callable[..., Tensor] = field(init=False)  # the loss of a whole (gathered) batch
    local: Callable[..., Tensor] = field(init=False)  # one rank's rows against all gathered columns

    def __post_init__(self) -> None:
        object.__setattr__(self, "whole", LOSSES[self.cfg.name])
        object.__setattr__(self, "local", LOCAL_LOSSES[self.cfg.name])

    def __call__(self, image: Tensor, text: Tensor, logit_scale: Tensor, logit_bias: Tensor | None,
                 image_ids: Tensor | None = None, text_ids: Tensor | None = None) -> Tensor:
        chunk = self.cfg.chunk_size or None
        if not self.cfg.duplicate_aware:
            image_ids = text_ids = None
        info = self.info
        if not info.enabled:
            ids = {} if image_ids is None else {"image_ids": image_ids, "text_ids": text_ids}
            return self.whole(image, text, logit_scale, logit_bias, chunk_size=chunk, **ids)
        all_image, all_text = all_gather_with_grad(image, info), all_gather_with_grad(text, info)  # (N, D)
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


def global_batch_loss(image: Tensor, text: Tensor, logit_scale: Tensor, logit_bias: Tensor | None,
                      image_ids: Tensor | None, text_ids: Tensor | None, loss_cfg: LossConfig,
                      info: DistInfo = DistInfo()) -> Tensor:
    """This rank's loss over the global batch, in one call (see `BatchLoss`; shapes there)."""
    return BatchLoss(loss_cfg, info)(image, text, logit_scale, logit_bias, image_ids, text_ids)
