import torch

from antijanus.core.perp_neg import (
    batch_dot,
    composable_noise,
    perp_neg_noise,
    perpendicular_component,
    projection_coefficient,
)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def reference_perp_neg(eps_unc, eps_pos, negatives, scale):
    """Single sample, the paper's equation written out with float64 dot products."""
    e_pos = (eps_pos - eps_unc).double()
    total = e_pos.clone()
    for eps_neg, w in negatives:
        e_i = (eps_neg - eps_unc).double()
        coef = (e_i * e_pos).sum() / (e_pos * e_pos).sum()
        total -= w * (e_i - coef * e_pos)
    return (eps_unc.double() + scale * total).float()


def test_perpendicular_part_is_orthogonal_to_positive_direction():
    x, y = randn(5, 4, 8, 8, seed=1), randn(5, 4, 8, 8, seed=2)
    perp = perpendicular_component(x, y)
    cosine = batch_dot(perp, y) / (perp.flatten(1).norm(dim=1) * y.flatten(1).norm(dim=1))
    assert cosine.abs().max() < 1e-5
    # and what was removed is parallel to y
    removed = x - perp
    assert torch.allclose(removed, projection_coefficient(x, y).view(-1, 1, 1, 1) * y, atol=1e-6)


def test_negative_equal_to_positive_changes_nothing():
    unc, pos = randn(3, 4, 8, 8, seed=3), randn(3, 4, 8, 8, seed=4)
    index = torch.tensor([0, 1, 1, 2])
    weights = torch.tensor([1.5, 2.0, 0.3, 7.0])
    guided, coef = perp_neg_noise(unc, pos, pos[index], index, weights, 7.5)
    plain, _ = perp_neg_noise(unc, pos, pos[:0], index[:0], weights[:0], 7.5)
    assert torch.allclose(guided, unc + 7.5 * (pos - unc), atol=1e-5)
    assert torch.allclose(guided, plain, atol=1e-5)
    assert torch.allclose(coef, torch.ones(4), atol=1e-5)
    # whereas the composable (CEBM) form erases the main concept
    cebm = composable_noise(unc, pos, pos[index], index, weights, 7.5)
    assert not torch.allclose(cebm, guided, atol=1e-2)


def test_orthogonal_negative_equals_composable_form():
    unc, pos = randn(2, 4, 8, 8, seed=5), randn(2, 4, 8, 8, seed=6)
    e_pos = pos - unc
    raw = randn(2, 4, 8, 8, seed=7)
    e_neg = perpendicular_component(raw, e_pos)  # exactly orthogonal to e_pos
    neg = unc + e_neg
    index, weights = torch.tensor([0, 1]), torch.tensor([0.7, 2.5])
    perp, coef = perp_neg_noise(unc, pos, neg, index, weights, 10.0)
    cebm = composable_noise(unc, pos, neg, index, weights, 10.0)
    assert coef.abs().max() < 1e-5
    assert torch.allclose(perp, cebm, atol=1e-4)
    assert not torch.allclose(perp, unc + 10.0 * e_pos, atol=1e-2)  # the negative does act


def test_zero_weights_give_plain_cfg():
    unc, pos, neg = randn(2, 4, 8, 8, seed=8), randn(2, 4, 8, 8, seed=9), randn(3, 4, 8, 8, seed=10)
    index = torch.tensor([0, 1, 1])
    guided, _ = perp_neg_noise(unc, pos, neg, index, torch.zeros(3), 100.0)
    assert torch.allclose(guided, unc + 100.0 * (pos - unc), atol=1e-4)


def test_batched_rows_match_per_sample_reference():
    unc, pos = randn(3, 4, 8, 8, seed=11), randn(3, 4, 8, 8, seed=12)
    neg = randn(4, 4, 8, 8, seed=13)
    index = torch.tensor([2, 0, 2, 2])  # sample 1 has no negative, sample 2 has three
    weights = torch.tensor([0.5, 1.2, 2.0, 0.1])
    guided, _ = perp_neg_noise(unc, pos, neg, index, weights, 15.0)
    for b in range(3):
        negatives = [(neg[r], weights[r]) for r in range(4) if index[r] == b]
        expected = reference_perp_neg(unc[b], pos[b], negatives, 15.0)
        assert torch.allclose(guided[b], expected, atol=1e-3, rtol=1e-5)


def test_fp16_inputs_match_fp32_and_do_not_overflow():
    # |values| ~ 30 over 4x64x64 elements: the dot products (~1.5e7) overflow fp16 (max 65504).
    unc = randn(2, 4, 64, 64, seed=14) * 30
    pos = unc + randn(2, 4, 64, 64, seed=15) * 30
    neg = unc[[0, 1]] + randn(2, 4, 64, 64, seed=16) * 30
    index, weights = torch.tensor([0, 1]), torch.tensor([1.0, 0.5])
    ref, ref_coef = perp_neg_noise(unc, pos, neg, index, weights, 7.5)
    half, half_coef = perp_neg_noise(unc.half(), pos.half(), neg.half(), index, weights, 7.5)
    assert torch.isfinite(half).all() and torch.isfinite(half_coef).all()
    assert torch.allclose(half_coef, ref_coef, atol=2e-3)
    assert torch.allclose(half, ref, rtol=1e-2, atol=0.5)  # fp16 rounding of the inputs only
    naive = (neg.half() - unc.half()) * (pos.half() - unc.half())
    assert not torch.isfinite(naive.sum(dim=(1, 2, 3))).all()  # the trap this guards against


def test_zero_positive_direction_gives_no_nan():
    unc = randn(2, 4, 8, 8, seed=17)
    pos = unc.clone()  # e_pos == 0
    neg = randn(2, 4, 8, 8, seed=18)
    index, weights = torch.tensor([0, 1]), torch.tensor([1.0, 2.0])
    guided, coef = perp_neg_noise(unc, pos, neg, index, weights, 7.5)
    assert torch.isfinite(guided).all()
    assert torch.equal(coef, torch.zeros(2))
    # with no positive direction, the whole negative direction is perpendicular to it
    assert torch.allclose(guided, composable_noise(unc, pos, neg, index, weights, 7.5), atol=1e-5)
    zero, tiny = torch.zeros_like(unc), torch.full_like(unc, 1e-30)  # squares underflow to 0
    assert torch.isfinite(perp_neg_noise(zero, tiny, neg, index, weights, 7.5)[0]).all()
