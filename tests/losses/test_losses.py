import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from contrastive.losses import (
    LOCAL_LOSSES,
    LOSSES,
    clip_loss,
    clip_loss_local,
    content_ids,
    siglip_loss,
    siglip_loss_local,
)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread each (conftest)


def make_inputs(bsz: int, dim: int = 16, dtype=torch.float32, scale: float = 14.0, bias: float | None = -2.0):
    """Normalised (B, D) features plus 0-dim scale and bias, all leaves that require grad."""
    image = F.normalize(torch.randn(bsz, dim, dtype=torch.float64), dim=-1).to(dtype).requires_grad_()
    text = F.normalize(torch.randn(bsz, dim, dtype=torch.float64), dim=-1).to(dtype).requires_grad_()
    logit_scale = torch.tensor(scale, dtype=dtype, requires_grad=True)
    logit_bias = None if bias is None else torch.tensor(bias, dtype=dtype, requires_grad=True)
    return image, text, logit_scale, logit_bias


def value_and_grads(loss_fn, image, text, logit_scale, logit_bias, **kwargs):
    inputs = [image, text, logit_scale] + ([logit_bias] if logit_bias is not None else [])
    loss = loss_fn(image, text, logit_scale, logit_bias, **kwargs)
    return [loss.detach(), *torch.autograd.grad(loss, inputs)]


def positives(i: int, bsz: int, image_ids, text_ids) -> list[int]:
    """Indices j such that (image i, text j) is a positive pair, straight from the definition."""
    return [j for j in range(bsz) if i == j or (text_ids is not None and bool(text_ids[i] == text_ids[j]))
            or (image_ids is not None and bool(image_ids[i] == image_ids[j]))]


def naive_clip(image, text, logit_scale, logit_bias=None, *, image_ids=None, text_ids=None, **_):
    """Row-by-row symmetric cross-entropy with targets uniform over each row's positives."""
    bsz = image.shape[0]
    bias = 0.0 if logit_bias is None else logit_bias
    total = 0.0
    for i in range(bsz):
        pos = positives(i, bsz, image_ids, text_ids)  # the relation is symmetric: also image j for text i
        for row in (logit_scale * text @ image[i] + bias, logit_scale * image @ text[i] + bias):  # (B,) each
            total = total + torch.logsumexp(row, 0) - row[pos].sum() / len(pos)
    return total / (2 * bsz)


def naive_siglip(image, text, logit_scale, logit_bias, *, image_ids=None, text_ids=None, **_):
    bsz = image.shape[0]
    bias = 0.0 if logit_bias is None else logit_bias
    total = 0.0
    for i in range(bsz):
        z = -torch.ones(bsz, dtype=image.dtype)  # (B,)
        z[positives(i, bsz, image_ids, text_ids)] = 1.0
        total = total - F.logsigmoid(z * (logit_scale * text @ image[i] + bias)).sum()
    return total / bsz


NAIVE = {"clip": naive_clip, "siglip": naive_siglip}
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=3e-2, atol=3e-2)}


# ---------------------------------------------------------------------------------------------------------------
# Against naive references and other projects


@pytest.mark.parametrize("name", ["clip", "siglip"])
@pytest.mark.parametrize("bsz", [1, 3, 17, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_naive_reference(name, bsz, dtype):
    inputs = make_inputs(bsz, dtype=dtype)
    got = value_and_grads(LOSSES[name], *inputs)
    # The reference sees the same (rounded) inputs in fp32, so bf16 error is only the loss's own arithmetic.
    ref_inputs = [x.detach().float().requires_grad_() for x in inputs]
    want = value_and_grads(NAIVE[name], *ref_inputs)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        assert_close(g.float(), w, **TOL[dtype])


def test_clip_without_bias_matches_naive():
    inputs = make_inputs(9, bias=None)
    for g, w in zip(value_and_grads(clip_loss, *inputs), value_and_grads(naive_clip, *inputs)):
        assert_close(g, w)


def test_clip_matches_transformers():
    modeling_clip = pytest.importorskip("transformers.models.clip.modeling_clip")
    # transformers 4.x calls it clip_loss, 5.x image_text_contrastive_loss; both take logits_per_text.
    hf_loss = getattr(modeling_clip, "image_text_contrastive_loss", None) or modeling_clip.clip_loss
    image, text, logit_scale, _ = make_inputs(32)
    ours = clip_loss(image, text, logit_scale)
    theirs = hf_loss(logit_scale * text @ image.T)
    assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("with_bias", [False, True])
def test_clip_matches_open_clip(with_bias):
    open_clip_loss = pytest.importorskip("open_clip.loss")
    image, text, logit_scale, logit_bias = make_inputs(32, bias=-1.5 if with_bias else None)
    ours = value_and_grads(clip_loss, image, text, logit_scale, logit_bias)
    theirs = value_and_grads(open_clip_loss.ClipLoss(), image, text, logit_scale, logit_bias)
    for o, t in zip(ours, theirs):
        assert_close(o, t, rtol=1e-6, atol=1e-6)


def test_siglip_matches_open_clip():
    open_clip_loss = pytest.importorskip("open_clip.loss")
    image, text, logit_scale, logit_bias = make_inputs(32, scale=10.0, bias=-10.0)
    ours = value_and_grads(siglip_loss, image, text, logit_scale, logit_bias)
    theirs = value_and_grads(open_clip_loss.SigLipLoss(), image, text, logit_scale, logit_bias)
    for o, t in zip(ours, theirs):
        assert_close(o, t, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Duplicate-aware targets


def test_content_ids():
    ids = content_ids(["a dog", "a cat", "a dog", "", "a cat"])
    assert ids.dtype == torch.int64
    assert ids.tolist() == [0, 1, 0, 2, 1]


def test_dense_ids_group_equal_ids_without_a_host_count():
    from contrastive.losses.positives import dense_ids

    ids = torch.tensor([907, -3, 907, 5, -3, 907, 2**40])
    labels, bound = dense_ids(ids)
    assert bound == len(ids) and labels.min() >= 0 and labels.max() < bound
    same = ids[:, None] == ids[None, :]
    assert torch.equal(labels[:, None] == labels[None, :], same)  # equal ids <=> equal labels


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_duplicate_caption_uses_soft_targets(name):
    image, text, logit_scale, logit_bias = make_inputs(12)
    with torch.no_grad():  # the same caption twice, encoded slightly differently (as with dropout in training)
        text[7] = F.normalize(text[2] + 0.2 * torch.randn(16), dim=-1)
    text_ids = content_ids([f"caption {i}" for i in range(12)][:7] + ["caption 2"] + [f"c{i}" for i in range(8, 12)])
    image_ids = content_ids([f"img{i}.png" for i in range(12)])
    ids = dict(image_ids=image_ids, text_ids=text_ids)
    got = value_and_grads(LOSSES[name], image, text, logit_scale, logit_bias, **ids)
    want = value_and_grads(NAIVE[name], image, text, logit_scale, logit_bias, **ids)
    for g, w in zip(got, want):
        assert_close(g, w)
    plain = LOSSES[name](image, text, logit_scale, logit_bias)
    assert (got[0] - plain).abs() > 1e-3


def test_clip_identical_duplicate_features_match_plain():
    # With bit-identical features for a repeated caption, the plain loss already caps that row at log 2 and
    # the soft targets only move gradient between the two copies, whose sum is what reaches the encoder.
    image, text, logit_scale, _ = make_inputs(12)
    with torch.no_grad():
        text[7] = text[2]
    text_ids = torch.tensor([0, 1, 2, 3, 4, 5, 6, 2, 8, 9, 10, 11])
    soft = value_and_grads(clip_loss, image, text, logit_scale, None, text_ids=text_ids)
    plain = value_and_grads(clip_loss, image, text, logit_scale, None)
    assert_close(soft[0], plain[0])
    assert_close(soft[1], plain[1])
    assert_close(soft[2][2] + soft[2][7], plain[2][2] + plain[2][7])
    assert (soft[2][2] - plain[2][2]).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_duplicate_image_uses_soft_targets(name):
    image, text, logit_scale, logit_bias = make_inputs(10)
    image_ids = torch.tensor([0, 1, 2, 0, 3, 4, 2, 5, 0, 6])  # image 0 three times, image 2 twice
    got = value_and_grads(LOSSES[name], image, text, logit_scale, logit_bias, image_ids=image_ids)
    want = value_and_grads(NAIVE[name], image, text, logit_scale, logit_bias, image_ids=image_ids)
    for g, w in zip(got, want):
        assert_close(g, w)


@pytest.mark.parametrize("name", ["clip", "siglip"])
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_distinct_ids_equal_plain(name, chunk_size):
    inputs = make_inputs(11)
    distinct = dict(image_ids=torch.arange(11) * 3, text_ids=torch.arange(11) + 100)
    got = value_and_grads(LOSSES[name], *inputs, chunk_size=chunk_size, **distinct)
    want = value_and_grads(LOSSES[name], *inputs)
    for g, w in zip(got, want):
        assert_close(g, w)


# ---------------------------------------------------------------------------------------------------------------
# Exact tiled mode


def random_ids(bsz: int) -> dict[str, torch.Tensor]:
    """Ids with plenty of repeats in both towers."""
    return dict(image_ids=torch.randint(0, max(1, bsz // 2), (bsz,)),
                text_ids=torch.randint(0, max(1, bsz // 3), (bsz,)))


@pytest.mark.parametrize("name", ["clip", "siglip"])
@pytest.mark.parametrize("bsz,dim,chunk_size", [(1, 8, 4), (17, 8, 4), (64, 32, 16), (100, 16, 32), (33, 16, 128),
                                                 (20, 4, 1)])
@pytest.mark.parametrize("with_ids", [False, True])
def test_tiled_matches_plain_fp32(name, bsz, dim, chunk_size, with_ids):
    inputs = make_inputs(bsz, dim)
    ids = random_ids(bsz) if with_ids else {}
    got = value_and_grads(LOSSES[name], *inputs, chunk_size=chunk_size, **ids)
    want = value_and_grads(LOSSES[name], *inputs, **ids)
    for g, w in zip(got, want):
        assert_close(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["clip", "siglip"])
@pytest.mark.parametrize("with_ids", [False, True])
def test_tiled_bf16_close_to_fp32(name, with_ids):
    inputs = make_inputs(50, 32, dtype=torch.bfloat16)
    ids = random_ids(50) if with_ids else {}
    got = value_and_grads(LOSSES[name], *inputs, chunk_size=16, **ids)
    fp32_inputs = [x.detach().float().requires_grad_() for x in inputs]
    want = value_and_grads(LOSSES[name], *fp32_inputs, **ids)
    for g, w in zip(got, want):
        assert g.dtype == torch.bfloat16
        assert_close(g.float(), w, **TOL[torch.bfloat16])


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_tiled_gradcheck_fp64(name):
    inputs = make_inputs(7, 4, dtype=torch.float64)
    ids = dict(text_ids=torch.tensor([0, 1, 0, 2, 3, 1, 4]))
    assert torch.autograd.gradcheck(lambda *x: LOSSES[name](*x, chunk_size=3, **ids), inputs)


@pytest.mark.parametrize("name", ["clip", "siglip"])
@pytest.mark.parametrize("chunk_size", [0, -4])
def test_bad_chunk_size_raises(name, chunk_size):
    with pytest.raises(ValueError, match="chunk_size"):
        LOSSES[name](*make_inputs(4), chunk_size=chunk_size)


def test_bad_ids_shape_raises():
    with pytest.raises(ValueError, match="text_ids"):
        clip_loss(*make_inputs(4), text_ids=torch.arange(5))


def largest_allocation_and_saved(loss_fn, bsz: int, dim: int, **kwargs) -> tuple[int, int]:
    """Run forward + backward; return (largest single CPU allocation in bytes, most elements in a saved tensor)."""
    from torch.profiler import ProfilerActivity, profile

    image, text, logit_scale, logit_bias = make_inputs(bsz, dim)
    largest_saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal largest_saved
        largest_saved = max(largest_saved, t.numel())
        return t

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = loss_fn(image, text, logit_scale, logit_bias, text_ids=torch.arange(bsz) // 2, **kwargs)
        loss.backward()
    assert math.isfinite(loss.item())
    assert torch.isfinite(image.grad).all() and torch.isfinite(text.grad).all()
    assert logit_scale.grad is not None and logit_bias.grad is not None
    return max(event.cpu_memory_usage for event in prof.events()), largest_saved


def test_memory_check_catches_the_plain_loss():
    bsz = 1024
    largest, saved = largest_allocation_and_saved(clip_loss, bsz, 16)
    assert largest >= bsz * bsz * 4 and saved >= bsz * bsz


@pytest.mark.parametrize("name", ["clip", "siglip"])
@pytest.mark.parametrize("bsz,dim,chunk_size", [
    (2048, 32, 512),
    pytest.param(8192, 64, 1024, marks=pytest.mark.slow),
])
def test_tiled_never_allocates_batch_by_batch(name, bsz, dim, chunk_size):
    largest, saved = largest_allocation_and_saved(LOSSES[name], bsz, dim, chunk_size=chunk_size)
    assert saved <= bsz * dim  # features and O(B) statistics only
    assert largest <= 2 * chunk_size * chunk_size * 4  # a tile or two, far below the (B, B) fp32 logits


# ---------------------------------------------------------------------------------------------------------------
# Local loss for distributed training


@pytest.mark.parametrize("name", ["clip", "siglip"])
@pytest.mark.parametrize("world_size", [1, 2, 4])
@pytest.mark.parametrize("chunk_size", [None, 5])
@pytest.mark.parametrize("with_ids", [False, True])
def test_local_losses_average_to_global(name, world_size, chunk_size, with_ids):
    bsz = 24
    inputs = make_inputs(bsz)
    image, text, logit_scale, logit_bias = inputs
    ids = random_ids(bsz) if with_ids else {}
    all_ids = {f"all_{k}": v for k, v in ids.items()}
    want = value_and_grads(LOSSES[name], *inputs, **ids)

    per_rank = bsz // world_size
    local_fn = LOCAL_LOSSES[name]
    loss = sum(
        local_fn(image[r * per_rank:(r + 1) * per_rank], text[r * per_rank:(r + 1) * per_rank], image, text,
                 logit_scale, logit_bias, offset=r * per_rank, chunk_size=chunk_size, **all_ids)
        for r in range(world_size)
    ) / world_size
    got = [loss.detach(), *torch.autograd.grad(loss, inputs)]
    for g, w in zip(got, want):
        assert_close(g, w)


def test_local_ids_may_be_given_explicitly():
    image, text, logit_scale, _ = make_inputs(8)
    ids = random_ids(8)
    sliced = clip_loss_local(image[4:], text[4:], image, text, logit_scale, offset=4,
                             all_image_ids=ids["image_ids"], all_text_ids=ids["text_ids"])
    explicit = clip_loss_local(image[4:], text[4:], image, text, logit_scale, offset=4,
                               image_ids=ids["image_ids"][4:], text_ids=ids["text_ids"][4:],
                               all_image_ids=ids["image_ids"], all_text_ids=ids["text_ids"])
    assert_close(sliced, explicit)
    assert (sliced - clip_loss_local(image[4:], text[4:], image, text, logit_scale, offset=4)).abs() > 1e-4


def test_local_offset_out_of_range_raises():
    image, text, logit_scale, logit_bias = make_inputs(8)
    with pytest.raises(ValueError, match="offset"):
        siglip_loss_local(image[:4], text[:4], image, text, logit_scale, logit_bias, offset=6)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_tiled_under_autocast_matches_plain(name):
    inputs = make_inputs(40, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = value_and_grads(LOSSES[name], *inputs, chunk_size=16)
    want = value_and_grads(LOSSES[name], *inputs)
    for g, w in zip(got, want):
        assert_close(g.float(), w, rtol=1e-5, atol=1e-6)
