"""The distillation loss against a naive reference: values and gradients, plain and tiled, local shares and global."""

import pytest
import torch
import torch.nn.functional as F

from contrastive.losses.distill import TeacherFeatures, distill_loss, distill_loss_local


def features(bsz: int, dim: int, t_dim: int, dtype=torch.float32):
    """Student features (with gradients) and a teacher's of another width, all L2-normalised."""
    image = F.normalize(torch.randn(bsz, dim, dtype=dtype), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(bsz, dim, dtype=dtype), dim=-1).requires_grad_()
    scale = torch.tensor(12.0, dtype=dtype, requires_grad=True)
    teacher = TeacherFeatures(F.normalize(torch.randn(bsz, t_dim, dtype=dtype), dim=-1),
                              F.normalize(torch.randn(bsz, t_dim, dtype=dtype), dim=-1), torch.tensor(30.0, dtype=dtype))
    return image, text, scale, teacher


def naive(image, text, scale, teacher, temperature=1.0):
    """OpenCLIP's soft cross-entropy with the teacher's probabilities, minus the teacher's entropy, row by row."""
    s = scale * image @ text.T / temperature
    t = teacher.logit_scale * teacher.image @ teacher.text.T / temperature
    total = 0.0
    for student, target in ((s, t), (s.T, t.T)):
        for i in range(student.shape[0]):
            p = target[i].softmax(0)
            total = total + (p * (p.log() - student[i].log_softmax(0))).sum()
    return total * temperature**2 / (2 * s.shape[0])


def grads(loss, *xs):
    return torch.autograd.grad(loss, xs)


@pytest.mark.parametrize("bsz", [1, 5, 32])
@pytest.mark.parametrize("chunk_size", [None, 3, 64])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_matches_naive_reference(bsz, chunk_size, temperature):
    image, text, scale, teacher = features(bsz, 16, 24)
    got = distill_loss(image, text, scale, teacher, temperature=temperature, chunk_size=chunk_size)
    ref = naive(image, text, scale, teacher, temperature)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads(got, image, text, scale), grads(ref, image, text, scale)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_equals_open_clip_form_up_to_teacher_entropy():
    """OpenCLIP's DistillClipLoss: mean over rows of −Σ p log q, both directions, halved; KL = that − H(p)."""
    image, text, scale, teacher = features(12, 8, 8)
    s = scale * image @ text.T
    t = teacher.logit_scale * teacher.image @ teacher.text.T

    def soft_ce(target, student):
        return -(target.softmax(1) * student.log_softmax(1)).sum(1).mean()

    def entropy(target):
        return -(target.softmax(1) * target.log_softmax(1)).sum(1).mean()

    open_clip = (soft_ce(t, s) + soft_ce(t.T, s.T)) / 2
    torch.testing.assert_close(distill_loss(image, text, scale, teacher), open_clip - (entropy(t) + entropy(t.T)) / 2)
    for g, r in zip(grads(distill_loss(image, text, scale, teacher), image, text, scale),
                    grads(open_clip, image, text, scale)):
        torch.testing.assert_close(g, r)


def test_zero_when_the_student_is_the_teacher():
    image, text, scale, _ = features(8, 16, 16)
    same = TeacherFeatures(image.detach(), text.detach(), scale.detach())
    assert distill_loss(image, text, scale, same).abs() < 1e-6
    assert distill_loss(image, text, scale, same, chunk_size=3).abs() < 1e-6
    other = TeacherFeatures(text.detach(), image.detach(), scale.detach())  # captions swapped: a real gap
    assert distill_loss(image, text, scale, other) > 1e-2


def test_teacher_gets_no_gradient():
    image, text, scale, teacher = features(6, 8, 8)
    teacher = TeacherFeatures(*(x.clone().requires_grad_() for x in teacher))
    for chunk in (None, 2):
        distill_loss(image, text, scale, teacher, chunk_size=chunk).backward()
        assert all(x.grad is None for x in teacher)


@pytest.mark.parametrize("world_size", [1, 2, 4])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_local_shares_average_to_global(world_size, chunk_size):
    bsz = 16
    image, text, scale, teacher = features(bsz, 16, 24)
    b = bsz // world_size
    shares = [distill_loss_local(image[r * b:(r + 1) * b], text[r * b:(r + 1) * b], image, text, scale,
                                 TeacherFeatures(teacher.image[r * b:(r + 1) * b], teacher.text[r * b:(r + 1) * b],
                                                 teacher.logit_scale), teacher,
                                 temperature=2.0, chunk_size=chunk_size) for r in range(world_size)]
    mean = sum(shares) / world_size
    ref = distill_loss(image, text, scale, teacher, temperature=2.0)
    torch.testing.assert_close(mean, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads(mean, image, text, scale), grads(ref, image, text, scale)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_tiled_gradcheck_fp64():
    image, text, scale, teacher = features(7, 5, 6, torch.float64)

    def fn(i, t, s):
        return distill_loss(i, t, s, teacher, temperature=1.5, chunk_size=3)

    assert torch.autograd.gradcheck(fn, (image, text, scale))


def test_tiled_bf16_close_to_fp32():
    image, text, scale, teacher = features(24, 16, 16)
    ref = distill_loss(image, text, scale, teacher)
    low = distill_loss(image.detach().bfloat16().requires_grad_(), text.detach().bfloat16(), scale, teacher,
                       chunk_size=8)
    assert low.dtype == torch.float32  # promoted with the fp32 scale, as the plain loss would be
    torch.testing.assert_close(low, ref, rtol=3e-2, atol=3e-2)
