import math

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from contrastive.evaluation.metrics import (
    DEFAULT_TEMPLATES,
    cosine_logits,
    rank_probabilities,
    retrieval_metrics,
    retrieval_ranks,
    zero_shot_classifier,
    zero_shot_metrics,
)


def sparse_unit_vectors(n: int, dim: int = 16, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, dim) unit vectors with four entries ±1/2: every dot product is an exact multiple of 1/4, so ties abound
    and any summation order gives bit-identical scores."""
    out = torch.zeros(n, dim)
    for row in range(n):
        slots = torch.randperm(dim, generator=generator)[:4]
        signs = torch.randint(0, 2, (4,), generator=generator) * 2 - 1
        out[row, slots] = 0.5 * signs.float()
    return out


def captions_for(n_img: int, n_txt: int, generator: torch.Generator) -> torch.Tensor:
    """(n_txt,) owners: every image gets at least one caption, the rest are spread at random."""
    owners = torch.cat([torch.arange(n_img), torch.randint(0, n_img, (n_txt - n_img,), generator=generator)])
    return owners[torch.randperm(n_txt, generator=generator)]


def naive_ranks(image_embeds, text_embeds, text_to_image):
    """Full score matrix and python loops, pessimistic ties."""
    scores = (image_embeds @ text_embeds.T).tolist()  # (N_img, N_txt)
    owners = text_to_image.tolist()
    image_ranks = []
    for t, own in enumerate(owners):
        column = [scores[i][t] for i in range(len(scores))]
        image_ranks.append(1 + sum(1 for i, s in enumerate(column) if i != own and s >= column[own]))
    text_ranks = []
    for i, row in enumerate(scores):
        correct = [t for t, own in enumerate(owners) if own == i]
        if not correct:
            text_ranks.append(0)
            continue
        best = max(row[t] for t in correct)
        text_ranks.append(1 + sum(1 for t, s in enumerate(row) if owners[t] != i and s >= best))
    return torch.tensor(image_ranks), torch.tensor(text_ranks)


def naive_retrieval_metrics(image_ranks, text_ranks, ks):
    text_ranks = text_ranks[text_ranks > 0]
    out = {}
    for name, ranks in (("image_retrieval", image_ranks.tolist()), ("text_retrieval", text_ranks.tolist())):
        for k in ks:
            out[f"{name}_recall@{k}"] = sum(r <= k for r in ranks) / len(ranks)
        ordered = sorted(ranks)
        n = len(ordered)
        out[f"{name}_mean_rank"] = sum(ordered) / n
        out[f"{name}_median_rank"] = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    return out


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
@pytest.mark.parametrize("kind", ["random", "ties"])
def test_retrieval_matches_brute_force(chunk_size, kind):
    g = torch.Generator().manual_seed(1)
    n_img, n_txt = 40, 110
    if kind == "random":
        images = F.normalize(torch.randn(n_img, 8, generator=g, dtype=torch.float64), dim=-1)
        texts = F.normalize(torch.randn(n_txt, 8, generator=g, dtype=torch.float64), dim=-1)
    else:
        images = sparse_unit_vectors(n_img, generator=g)
        texts = sparse_unit_vectors(n_txt, generator=g)
        images[5:10] = images[0]  # duplicate images: a caption of image 0 ties with five others
        texts[20:30] = texts[0]
    owners = captions_for(n_img, n_txt, g)
    ks = (1, 3, 5, 10, 50)

    ranks = retrieval_ranks(images, texts, owners, chunk_size=chunk_size)
    want_image, want_text = naive_ranks(images, texts, owners)
    torch.testing.assert_close(ranks.image_retrieval, want_image)
    torch.testing.assert_close(ranks.text_retrieval, want_text)

    got = retrieval_metrics(images, texts, owners, ks=ks, chunk_size=chunk_size)
    want = naive_retrieval_metrics(want_image, want_text, ks)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    if kind == "ties":
        # The duplicates force ranks past 1 for some queries; the brute force agreeing is then a real check.
        assert want_image.max() > 5 and got["image_retrieval_recall@1"] < 1


def test_retrieval_ties_are_pessimistic_by_hand():
    images = torch.eye(3)
    s = 1 / math.sqrt(2)
    texts = torch.tensor(
        [
            [math.sqrt(8) / 3, 0.0, 1 / 3],  # -> image 0 alone on top; ties caption 2 for image 2
            [s, s, 0.0],  # -> images 0 and 1 tie: pessimistic rank 2
            [2 / 3, 2 / 3, 1 / 3],  # -> image 2 behind both others: rank 3
        ]
    )
    owners = torch.tensor([0, 1, 2])
    ranks = retrieval_ranks(images, texts, owners, chunk_size=2)
    assert ranks.image_retrieval.tolist() == [1, 2, 3]
    # Image 2 scores captions 0 and 2 both 1/3, so its own caption is ranked second.
    assert ranks.text_retrieval.tolist() == [1, 1, 2]

    m = retrieval_metrics(images, texts, owners, ks=(1, 2, 3))
    assert m["image_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert m["image_retrieval_recall@2"] == pytest.approx(2 / 3)
    assert m["image_retrieval_recall@3"] == 1.0
    assert m["image_retrieval_mean_rank"] == pytest.approx(2.0)
    assert m["image_retrieval_median_rank"] == 2.0
    assert m["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert m["text_retrieval_mean_rank"] == pytest.approx(4 / 3)
    assert m["text_retrieval_median_rank"] == 1.0


def test_collapsed_embeddings_score_worst_not_best():
    # A model that maps everything to one point must not get perfect recall from the tie rule.
    n = 10
    images = F.normalize(torch.ones(n, 4), dim=-1)
    m = retrieval_metrics(images, images.clone(), torch.arange(n), ks=(1, n))
    assert m["image_retrieval_recall@1"] == 0.0
    assert m["text_retrieval_recall@1"] == 0.0
    assert m["image_retrieval_mean_rank"] == n
    assert m["image_retrieval_recall@10"] == 1.0


def test_recall_is_monotone_in_k_and_saturates():
    g = torch.Generator().manual_seed(2)
    n_img, n_txt = 30, 75
    images = F.normalize(torch.randn(n_img, 6, generator=g), dim=-1)
    texts = F.normalize(torch.randn(n_txt, 6, generator=g), dim=-1)
    owners = captions_for(n_img, n_txt, g)
    ks = tuple(range(1, n_txt + 10))
    m = retrieval_metrics(images, texts, owners, ks=ks, chunk_size=8)
    for direction in ("image_retrieval", "text_retrieval"):
        recalls = [m[f"{direction}_recall@{k}"] for k in ks]
        assert all(a <= b for a, b in zip(recalls, recalls[1:]))
        assert recalls[0] < 1.0 and recalls[-1] == 1.0
    assert m["image_retrieval_recall@30"] == 1.0  # k = N_img: every image is in the top k


def test_images_without_captions_are_distractors_not_queries():
    images = torch.eye(4)
    texts = torch.eye(4)[:2]
    m = retrieval_metrics(images, texts, torch.tensor([0, 1]), ks=(1,))
    assert m["text_retrieval_recall@1"] == 1.0  # images 2 and 3 have nothing to retrieve
    assert retrieval_ranks(images, texts, torch.tensor([0, 1])).text_retrieval.tolist() == [1, 1, 0, 0]


def test_retrieval_rejects_bad_inputs():
    images, texts = torch.eye(3), torch.eye(3)
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(images, texts, torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(images, texts.masked_fill(texts == 1, float("nan")), torch.arange(3))
    with pytest.raises(ValueError, match="width"):
        retrieval_metrics(images, torch.eye(4)[:3], torch.arange(3))
    with pytest.raises(TypeError, match="integer"):
        retrieval_metrics(images, texts, torch.arange(3.0))


def peak_live_bytes(fn) -> int:
    """Peak of CPU bytes allocated and not yet freed while `fn` runs, at operator granularity."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    # Self usage attributes each allocation and free to exactly one event; "[memory]" events carry the frees that
    # happen outside any operator.
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def test_retrieval_never_allocates_a_dense_matrix():
    g = torch.Generator().manual_seed(3)
    n, dim, chunk = 20_000, 8, 1024
    images = F.normalize(torch.randn(n, dim, generator=g), dim=-1)
    texts = F.normalize(images + 0.3 * torch.randn(n, dim, generator=g), dim=-1)
    owners = torch.arange(n)

    # The probe sees a dense score matrix when one is built, so the bound below can fail.
    small = 2_000
    assert peak_live_bytes(lambda: (images[:small] @ texts[:small].T >= 0).sum(1)) >= small * small * 4

    result = {}
    peak = peak_live_bytes(lambda: result.update(retrieval_metrics(images, texts, owners, chunk_size=chunk)))
    # One float32 (chunk, N) score buffer alive at a time, plus a few O(N) vectors; a dense matrix is 1.6 GB.
    assert peak <= chunk * n * 4 + 128 * n
    assert 0.0 < result["image_retrieval_recall@1"] < 1.0  # the work was really done


def naive_zero_shot(image_embeds, classifier, labels, scale):
    logits = (scale * (image_embeds @ classifier)).tolist()  # (N, C)
    ranks = [sum(1 for v in row if v >= row[y]) for row, y in zip(logits, labels.tolist())]
    num_classes = classifier.shape[1]
    out = {"acc1": sum(r == 1 for r in ranks) / len(ranks)}
    if num_classes >= 5:
        out["acc5"] = sum(r <= 5 for r in ranks) / len(ranks)
    recalls = []
    for c in range(num_classes):
        members = [r for r, y in zip(ranks, labels.tolist()) if y == c]
        if members:
            recalls.append(sum(r == 1 for r in members) / len(members))
    out["mean_per_class_recall"] = sum(recalls) / len(recalls)
    return out


@pytest.mark.parametrize("num_classes", [3, 12])
@pytest.mark.parametrize("chunk_size", [1, 7, 500])
def test_zero_shot_matches_brute_force(num_classes, chunk_size):
    g = torch.Generator().manual_seed(4)
    n = 90
    classifier = sparse_unit_vectors(num_classes, generator=g).T  # (D, C)
    images = sparse_unit_vectors(n, generator=g)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    got = zero_shot_metrics(images, classifier, labels, chunk_size=chunk_size)
    want = naive_zero_shot(images, classifier, labels, 100.0)
    assert ("acc5" in got) == (num_classes >= 5)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_zero_shot_ties_and_imbalance_by_hand():
    classifier = torch.eye(3)  # (D=3, C=3)
    s = 1 / math.sqrt(2)
    images = torch.tensor(
        [
            [1.0, 0.0, 0.0],  # class 0, right
            [1.0, 0.0, 0.0],  # class 0, right
            [1.0, 0.0, 0.0],  # class 0, right
            [0.0, 1.0, 0.0],  # class 0, wrong
            [s, s, 0.0],  # class 1, tied with class 0: counts as wrong
            [0.0, 0.0, 1.0],  # class 2, right
        ]
    )
    labels = torch.tensor([0, 0, 0, 0, 1, 2])
    m = zero_shot_metrics(images, classifier, labels)
    assert "acc5" not in m
    assert m["acc1"] == pytest.approx(4 / 6)
    # Per class recall 3/4, 0/1, 1/1; balanced accuracy weighs the rare classes as much as class 0.
    assert m["mean_per_class_recall"] == pytest.approx((3 / 4 + 0 + 1) / 3)

    # A class with no images is left out of the per-class mean, but still competes as a candidate.
    wide = torch.cat([classifier, torch.zeros(3, 1)], dim=1)
    assert zero_shot_metrics(images, wide, labels)["mean_per_class_recall"] == pytest.approx(7 / 12)


def test_zero_shot_classifier_averages_normalised_templates():
    table = {
        "a cat.": torch.tensor([3.0, 0.0]),  # unnormalised on purpose: every template must weigh the same
        "art of cat": torch.tensor([0.0, 1.0]),
        "a dog.": torch.tensor([1.0, 1.0]),
        "art of dog": torch.tensor([-1.0, 1.0]),
    }
    calls = []

    def encode(texts: list[str]) -> torch.Tensor:
        calls.append(texts)
        return torch.stack([table[t] for t in texts])

    weights = zero_shot_classifier(encode, ["cat", "dog"], ["a {}.", "art of {}"])
    assert calls == [["a cat.", "art of cat"], ["a dog.", "art of dog"]]
    assert weights.shape == (2, 2)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(weights, torch.tensor([[s, 0.0], [s, 1.0]]))


def test_zero_shot_classifier_rejects_templates_without_slot():
    with pytest.raises(ValueError, match="slot"):
        zero_shot_classifier(lambda texts: torch.ones(len(texts), 2), ["cat"], ["a photo."])


def test_default_templates_format_and_differ():
    assert len(DEFAULT_TEMPLATES) == len(set(DEFAULT_TEMPLATES)) >= 7
    assert "a photo of a {}." in DEFAULT_TEMPLATES and "itap of a {}." in DEFAULT_TEMPLATES
    assert all(t.format("zebra") != t and "zebra" in t.format("zebra") for t in DEFAULT_TEMPLATES)


@pytest.mark.parametrize("bias", [None, -2.5])
def test_rank_probabilities_and_cosine_logits(bias):
    g = torch.Generator().manual_seed(5)
    images = F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    texts = F.normalize(torch.randn(9, 8, generator=g, dtype=torch.float64), dim=-1)
    scale = torch.tensor(14.3, dtype=torch.float64)
    out = rank_probabilities(images, texts, scale, bias)
    want_cosine = torch.tensor(
        [[sum(a * b for a, b in zip(img, txt)) for txt in texts.tolist()] for img in images.tolist()],
        dtype=torch.float64,
    )
    want_logit = scale * want_cosine + (0.0 if bias is None else bias)
    torch.testing.assert_close(out["cosine"], want_cosine)
    torch.testing.assert_close(out["logit"], want_logit)
    torch.testing.assert_close(cosine_logits(images, texts, scale, bias), want_logit)
    want_prob = want_logit.exp() / want_logit.exp().sum(dim=1, keepdim=True)
    torch.testing.assert_close(out["probability"], want_prob)
    torch.testing.assert_close(out["probability"].sum(dim=1), torch.ones(6, dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(6)
    images, texts = sparse_unit_vectors(50, generator=g), sparse_unit_vectors(120, generator=g)
    owners = captions_for(50, 120, g)
    labels = torch.randint(0, 10, (50,), generator=g)
    classifier = sparse_unit_vectors(10, generator=g).T
    cuda = torch.device("cuda")
    assert retrieval_metrics(images.to(cuda), texts.to(cuda), owners.to(cuda), chunk_size=16) == retrieval_metrics(
        images, texts, owners, chunk_size=16
    )
    assert zero_shot_metrics(images.to(cuda), classifier.to(cuda), labels.to(cuda)) == zero_shot_metrics(
        images, classifier, labels
    )
