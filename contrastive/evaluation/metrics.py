"""Evaluation math on already-computed embeddings: retrieval recall/ranks, zero-shot accuracy, caption ranking.

Every function takes L2-normalised embeddings (they are not renormalised here) on any device. Similarities are
computed in query chunks on the embeddings' device, so the peak extra memory is O(chunk_size x N) and a 100k x 100k
evaluation never holds a dense N x N matrix; only per-query ranks (O(N)) come back to the host.

Ties are resolved pessimistically everywhere: a correct item that scores exactly as high as an incorrect one is
ranked after it, so rank = 1 + #{incorrect items scoring >= the best correct score}. Constant or collapsed
embeddings therefore score as badly as they deserve instead of as well as the iteration order allows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

# The 7-template subset of OpenAI's ImageNet prompts chosen by forward selection, plus the plain prompts.
DEFAULT_TEMPLATES: list[str] = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a {}.",
]


class RetrievalRanks(NamedTuple):
    """1-based rank of the best correct item per query (pessimistic ties), on the CPU."""

    image_retrieval: torch.Tensor  # (N_txt,) int64, text query -> its image among all images
    text_retrieval: torch.Tensor  # (N_img,) int64, image query -> its best caption; 0 for images without captions


def _scoring_dtype(x: torch.Tensor) -> torch.Tensor:
    # Half-precision scores would turn many near-ties into exact ties, which the pessimistic rule then punishes.
    if not x.is_floating_point():
        raise TypeError(f"embeddings must be a floating-point tensor, got {x.dtype}")
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_embeddings(name: str, x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(x.shape)}")
    x = _scoring_dtype(x.detach())
    # A NaN score compares false with everything and would rank first: refuse rather than report a perfect score.
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf; check the model's outputs before evaluating")
    return x


def block_rows(n_keys: int, budget_bytes: int = 256 << 20, most: int = 4096) -> int:
    """Query rows per similarity block such that one (rows, n_keys) float32 block stays within `budget_bytes`
    (100k keys: 671 rows, a 256 MiB block instead of the 40 GB full matrix)."""
    return max(1, min(most, budget_bytes // (4 * max(n_keys, 1))))


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _score_chunks(
    queries: torch.Tensor, keys: torch.Tensor, chunk_size: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yields (start, queries[start : start + c] @ keysᵀ) with shape (c, N_keys), c <= chunk_size.

    Every chunk is written into one preallocated buffer: the caller must finish with a chunk before asking for the
    next. Reusing the buffer bounds memory and, on the CPU, avoids faulting fresh pages in for every chunk.
    """
    buffer = queries.new_empty(min(chunk_size, queries.shape[0]), keys.shape[0])  # (chunk, N_keys)
    for start in range(0, queries.shape[0], chunk_size):
        block = queries[start : start + chunk_size]  # (c, D)
        yield start, torch.mm(block, keys.T, out=buffer[: block.shape[0]])


def _count_at_least_(scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """(c,) int64 count of entries >= threshold per row; overwrites `scores` (c, N) with 0/1 to avoid new buffers.

    Counting a bool mask would allocate an int64 copy of it on the CPU; summing 1.0s in place is exact while partial
    sums stay below 2**24 (float32), and a wider accumulator covers longer rows.
    """
    exact_below = 2**24 if scores.dtype == torch.float32 else 2**53
    ones = scores.ge_(threshold)
    counts = ones.sum(dim=1) if scores.shape[1] < exact_below else ones.sum(dim=1, dtype=torch.float64)
    return counts.round().long()


@torch.no_grad()
def retrieval_ranks(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_to_image: torch.Tensor,
    *,
    chunk_size: int = 4096,
) -> RetrievalRanks:
    """Per-query ranks for text->image and image->text retrieval, without sorting and without an N x N matrix.

    image_embeds (N_img, D), text_embeds (N_txt, D), text_to_image (N_txt,) int: the image each caption describes.
    Several captions per image are allowed; an image query's correct items are all its captions, and its rank is that
    of the best-scoring one. Images with no caption (distractors) are candidates for text->image but have rank 0 as
    image queries. Peak extra memory is one (chunk_size, N) score matrix on the embeddings' device.
    """
    image_embeds = _check_embeddings("image_embeds", image_embeds)
    text_embeds = _check_embeddings("text_embeds", text_embeds)
    _check_chunk_size(chunk_size)
    if image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(
            f"image_embeds and text_embeds differ in width: {image_embeds.shape[1]} vs {text_embeds.shape[1]}"
        )
    dtype = torch.promote_types(image_embeds.dtype, text_embeds.dtype)
    device = image_embeds.device
    image_embeds, text_embeds = image_embeds.to(dtype), text_embeds.to(device, dtype)
    n_img, n_txt = image_embeds.shape[0], text_embeds.shape[0]
    if text_to_image.shape != (n_txt,):
        raise ValueError(f"text_to_image must have shape ({n_txt},), got {tuple(text_to_image.shape)}")
    if text_to_image.is_floating_point():
        raise TypeError(f"text_to_image must hold integer indices, got {text_to_image.dtype}")
    text_to_image = text_to_image.to(device, torch.long)
    if n_txt and (text_to_image.min() < 0 or text_to_image.max() >= n_img):
        raise ValueError(f"text_to_image holds indices outside [0, {n_img})")

    return RetrievalRanks(
        _image_retrieval_ranks(image_embeds, text_embeds, text_to_image, chunk_size).cpu(),
        _text_retrieval_ranks(image_embeds, text_embeds, text_to_image, chunk_size).cpu(),
    )


def _image_retrieval_ranks(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, text_to_image: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """(N_txt,) rank of each caption's image among all images."""
    ranks = torch.empty(text_embeds.shape[0], dtype=torch.long, device=text_embeds.device)
    for start, scores in _score_chunks(text_embeds, image_embeds, chunk_size):  # (c, N_img)
        correct = scores.gather(1, text_to_image[start : start + chunk_size, None])  # (c, 1)
        # The count includes the correct image itself (it ties with itself), which supplies the "1 +".
        ranks[start : start + chunk_size] = _count_at_least_(scores, correct)
    return ranks


def _text_retrieval_ranks(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, text_to_image: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """(N_img,) rank of each image's best caption among all captions; 0 for images without captions."""
    n_img, device = image_embeds.shape[0], image_embeds.device
    # Captions grouped by owner, so each chunk of image queries finds its captions with one binary search.
    owners_sorted, captions_by_owner = torch.sort(text_to_image, stable=True)  # (N_txt,), (N_txt,)
    ranks = torch.zeros(n_img, dtype=torch.long, device=device)
    for start, scores in _score_chunks(image_embeds, text_embeds, chunk_size):  # (c, N_txt)
        c = scores.shape[0]
        lo, hi = torch.searchsorted(owners_sorted, torch.tensor([start, start + c], device=device)).tolist()
        captions, rows = captions_by_owner[lo:hi], owners_sorted[lo:hi] - start  # (m,), (m,)
        # Read from the same score matrix, so ties between correct and incorrect captions are exact.
        own_scores = scores[rows, captions]  # (m,)
        best = torch.full((c,), float("-inf"), dtype=scores.dtype, device=device)
        best.scatter_reduce_(0, rows, own_scores, reduce="amax")  # (c,)
        correct_at_least = torch.zeros(c, dtype=torch.long, device=device)
        correct_at_least.scatter_add_(0, rows, (own_scores >= best[rows]).long())  # (c,) ties among own captions
        at_least = _count_at_least_(scores, best[:, None])  # (c,) correct and incorrect captions >= best
        ranks[start : start + c] = 1 + at_least - correct_at_least
    has_caption = torch.bincount(text_to_image, minlength=n_img) > 0  # (N_img,)
    ranks[~has_caption] = 0
    return ranks


def _median(values: torch.Tensor) -> float:
    # The midpoint of the two middle values for even counts, as numpy does (torch.median takes the lower one).
    ordered = values.double().sort().values
    n = ordered.numel()
    return float((ordered[(n - 1) // 2] + ordered[n // 2]) / 2)


def retrieval_metrics(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_to_image: torch.Tensor,
    *,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 4096,
) -> dict[str, float]:
    """CLIP_benchmark-named retrieval metrics.

    `image_retrieval_*` is text->image (each caption queries all images), `text_retrieval_*` is image->text (an image
    query hits if any of its captions is in its top k; images without captions are not queried). Ranks are 1-based
    with pessimistic ties (see the module docstring); recall@k = fraction of queries with rank <= k, so a k above the
    number of candidates gives 1.0. Median ranks of an even count average the two middle values.
    """
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
    ranks = retrieval_ranks(image_embeds, text_embeds, text_to_image, chunk_size=chunk_size)
    if ranks.image_retrieval.numel() == 0:
        raise ValueError("retrieval needs at least one caption")
    per_direction = {
        "image_retrieval": ranks.image_retrieval,
        "text_retrieval": ranks.text_retrieval[ranks.text_retrieval > 0],
    }
    metrics: dict[str, float] = {}
    for direction, r in per_direction.items():
        for k in ks:
            metrics[f"{direction}_recall@{k}"] = (r <= k).double().mean().item()
    for direction, r in per_direction.items():
        metrics[f"{direction}_mean_rank"] = r.double().mean().item()
        metrics[f"{direction}_median_rank"] = _median(r)
    return metrics


@torch.no_grad()
def zero_shot_classifier(
    text_encoder_fn: Callable[[list[str]], torch.Tensor],
    classnames: list[str],
    templates: list[str],
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Class weights (D, C): per class, the renormalised mean of its normalised template embeddings.

    text_encoder_fn maps a list of n strings to (n, D) embeddings; it is called once per class with every template
    formatted with the class name (`template.format(name)`).
    """
    if not classnames:
        raise ValueError("zero_shot_classifier needs at least one class name")
    if not templates:
        raise ValueError("zero_shot_classifier needs at least one template")
    # A template without a slot gives every class the same prompt, and the classifier silently ties everywhere.
    constant = [t for t in templates if t.format("\0") == t]
    if constant:
        raise ValueError(f"templates must contain a '{{}}' slot for the class name: {constant}")
    weights = []
    for name in classnames:
        embeds = text_encoder_fn([template.format(name) for template in templates])  # (T, D)
        mean = F.normalize(embeds.float(), dim=-1).mean(dim=0)  # (D,)
        weights.append(F.normalize(mean, dim=0))
    classifier = torch.stack(weights, dim=1)  # (D, C)
    return classifier if device is None else classifier.to(device)


@torch.no_grad()
def zero_shot_metrics(
    image_embeds: torch.Tensor,
    classifier: torch.Tensor,
    labels: torch.Tensor,
    *,
    logit_scale: float = 100.0,
    chunk_size: int = 4096,
) -> dict[str, float]:
    """acc1, acc5 (only with >= 5 classes) and mean_per_class_recall of `scale * image_embeds @ classifier`.

    image_embeds (N, D), classifier (D, C), labels (N,) int in [0, C). A true class tied with another one counts as
    ranked after it (pessimistic, see the module docstring). The scale matches CLIP_benchmark's fixed 100; being
    positive it changes no ranking except through rounding. mean_per_class_recall averages top-1 recall over the
    classes present in `labels` (balanced accuracy).
    """
    image_embeds = _check_embeddings("image_embeds", image_embeds)
    _check_chunk_size(chunk_size)
    if logit_scale <= 0:
        raise ValueError(f"logit_scale must be positive (else it reverses or erases the ranking), got {logit_scale}")
    if classifier.ndim != 2 or classifier.shape[0] != image_embeds.shape[1]:
        raise ValueError(
            f"classifier must have shape (D={image_embeds.shape[1]}, C), got {tuple(classifier.shape)}"
        )
    n, num_classes = image_embeds.shape[0], classifier.shape[1]
    if labels.shape != (n,) or n == 0:
        raise ValueError(f"labels must have shape ({n},) with N >= 1, got {tuple(labels.shape)}")
    device = image_embeds.device
    dtype = torch.promote_types(image_embeds.dtype, _scoring_dtype(classifier).dtype)
    image_embeds, classifier = image_embeds.to(dtype), classifier.detach().to(device, dtype)
    if labels.is_floating_point():
        raise TypeError(f"labels must hold integer class indices, got {labels.dtype}")
    labels = labels.to(device, torch.long)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels hold classes outside [0, {num_classes})")

    ranks = torch.empty(n, dtype=torch.long, device=device)
    for start, scores in _score_chunks(image_embeds, classifier.T, chunk_size):
        logits = scores.mul_(logit_scale)  # (c, C)
        true_logit = logits.gather(1, labels[start : start + chunk_size, None])  # (c, 1)
        ranks[start : start + chunk_size] = _count_at_least_(logits, true_logit)  # includes the true class

    top1 = (ranks == 1).double()  # (N,)
    metrics = {"acc1": top1.mean().item()}
    if num_classes >= 5:
        metrics["acc5"] = (ranks <= 5).double().mean().item()
    hits = torch.bincount(labels, weights=top1, minlength=num_classes)  # (C,)
    counts = torch.bincount(labels, minlength=num_classes)  # (C,)
    present = counts > 0
    metrics["mean_per_class_recall"] = (hits[present] / counts[present]).mean().item()
    return metrics


def cosine_logits(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: float | torch.Tensor,
    logit_bias: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """(N_img, N_txt) = logit_scale * image_embeds @ text_embedsᵀ (+ logit_bias).

    logit_scale is the multiplier itself (e.g. `model.logit_scale.exp()`), not its log.
    """
    logits = logit_scale * (image_embeds @ text_embeds.T)
    return logits if logit_bias is None else logits + logit_bias


def rank_probabilities(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: float | torch.Tensor,
    logit_bias: float | torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Scores of every candidate caption for each image, three ways, each (N_img, N_txt).

    "cosine": image_embeds @ text_embedsᵀ; "logit": scale * cosine (+ bias); "probability": softmax of the logits
    over the captions of each image (rows sum to 1).
    """
    cosine = image_embeds @ text_embeds.T  # (N_img, N_txt)
    logit = logit_scale * cosine
    if logit_bias is not None:
        logit = logit + logit_bias
    return {"cosine": cosine, "logit": logit, "probability": logit.softmax(dim=1)}
