"""The policies against torchvision.transforms.autoaugment: the same tables, the same image for
the same drawn ops, and draws that follow torchvision's distributions (chi-square)."""
import collections

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import chisquare
from torchvision.transforms import InterpolationMode, autoaugment as tv_aa

from jaxvision.data import policies as P
from test_augment import photo

SPACES = {"autoaugment": tv_aa.AutoAugment(), "randaugment": tv_aa.RandAugment(),
          "trivialaugment": tv_aa.TrivialAugmentWide()}


def _simd_floats():
    cap = torch.backends.cpu.get_cpu_capability()
    return 16 if "512" in cap else 8 if "AVX" in cap else 4


@pytest.mark.parametrize("num_bins", [2, 7, 10, 31, 64])
def test_magnitude_bins_equal_torchvision(num_bins):
    """Bitwise where torch's linspace runs its scalar loop (under two SIMD vectors); beyond,
    torch's bins depend on the CPU's vector width, and ours are within one float32 ulp."""
    exact = num_bins < 2 * _simd_floats()
    for hw in ((224, 176), (33, 50)):
        pairs = [(P.augmentation_space(k, num_bins, hw), tv._augmentation_space(num_bins, hw)
                  if k != "trivialaugment" else tv._augmentation_space(num_bins))
                 for k, tv in SPACES.items()]
        pairs += [(P.augmentation_space("augmix", num_bins, hw, all_ops),
                   tv_aa.AugMix(all_ops=all_ops)._augmentation_space(num_bins, hw))
                  for all_ops in (True, False)]
        for ours, tv in pairs:
            assert list(ours) == list(tv)
            for op, (mags, signed) in tv.items():
                assert ours[op][1] == signed, op
                if mags.ndim == 0:
                    assert ours[op][0] is None, op
                    continue
                t = mags.numpy()
                assert ours[op][0].dtype == t.dtype, op
                if exact:
                    np.testing.assert_array_equal(ours[op][0], t, err_msg=op)
                else:
                    np.testing.assert_array_max_ulp(ours[op][0], t, maxulp=1)


def test_autoaugment_tables_equal_torchvision():
    for policy in tv_aa.AutoAugmentPolicy:
        assert P.autoaugment_policies(policy.value) == tv_aa.AutoAugment()._get_policies(policy)
    with pytest.raises(ValueError, match="AutoAugment policy must be one of"):
        P.autoaugment_policies("coco")


def _record_tv(monkeypatch, transform, img, seed):
    """torchvision's output on ``img`` and the (op, magnitude) plan it drew."""
    calls, real = [], tv_aa._apply_op

    def spy(im, op, magnitude, interpolation, fill):
        calls.append((op, magnitude))
        return real(im, op, magnitude, interpolation, fill)

    monkeypatch.setattr(tv_aa, "_apply_op", spy)
    torch.manual_seed(seed)
    out = transform(img)
    monkeypatch.setattr(tv_aa, "_apply_op", real)
    return np.asarray(out), calls


def _values(space):
    out = {}
    for op, (mags, signed) in space.items():
        vals = {0.0} if mags is None else {float(v) for v in mags}
        out[op] = vals | ({-v for v in vals} if signed else set())
    return out


@pytest.mark.parametrize("name,tv,ours", [
    ("autoaugment", tv_aa.AutoAugment(tv_aa.AutoAugmentPolicy.SVHN),
     P.AutoAugment("svhn")),
    ("autoaugment", tv_aa.AutoAugment(tv_aa.AutoAugmentPolicy.IMAGENET,
                                      InterpolationMode.BILINEAR, fill=[9, 99, 199]),
     P.AutoAugment("imagenet", "bilinear", fill=[9, 99, 199])),
    ("randaugment", tv_aa.RandAugment(3, 17, 31, InterpolationMode.BILINEAR),
     P.RandAugment(3, 17, 31, "bilinear")),
    ("trivialaugment", tv_aa.TrivialAugmentWide(), P.TrivialAugmentWide()),
])
def test_policy_applies_torchvisions_draws_exactly(monkeypatch, name, tv, ours):
    """For torchvision's own draws on a PIL image, our policy's output is its output; every
    magnitude it drew is one our tables can draw."""
    img = photo(64, 56)
    h, w = img.shape[:2]
    bins = {"randaugment": 31, "trivialaugment": 31}.get(name, 10)
    values = _values(P.augmentation_space(name, bins, (h, w)))
    for seed in range(12):
        expect, plan = _record_tv(monkeypatch, tv, Image.fromarray(img), seed)
        for op, m in plan:
            assert m in values[op], (op, m)
        np.testing.assert_array_equal(ours.apply(img, plan), expect, err_msg=str(plan))


def test_augmix_mixes_as_torchvision(monkeypatch):
    """torchvision's AugMix runs its ops on tensors even for a PIL image; ours run through PIL
    (test_augment bounds the ops' PIL/tensor differences). With torchvision's ops sent through
    its PIL path, for its draws (chain depth 2, so the chains can be told apart), its mix of
    weights, float32 sums and truncation is ours exactly."""
    img = photo(64, 56)
    tv = tv_aa.AugMix(severity=10, chain_depth=2, interpolation=InterpolationMode.NEAREST)
    ours = P.AugMix(severity=10, chain_depth=2, interpolation="nearest")
    draws, calls, real = [], [], tv_aa._apply_op

    def pil_op(im, op, magnitude, interpolation, fill):
        calls.append((op, magnitude))
        out = P.apply_op_pil(Image.fromarray(im[0].permute(1, 2, 0).numpy()), op, magnitude)
        return torch.tensor(np.asarray(out)).permute(2, 0, 1)[None]

    monkeypatch.setattr(tv, "_sample_dirichlet",
                        lambda p: draws.append(torch._sample_dirichlet(p)) or draws[-1])
    monkeypatch.setattr(tv_aa, "_apply_op", pil_op)
    for seed in range(8):
        draws.clear()
        calls.clear()
        torch.manual_seed(seed)
        expect = np.asarray(tv(Image.fromarray(img)))
        m, w = draws[0][0].numpy(), draws[1][0].numpy() * draws[0][0, 1].numpy()
        chains = [calls[i:i + 2] for i in range(0, len(calls), 2)]
        np.testing.assert_array_equal(ours.apply(img, (m, w, chains)), expect)
    monkeypatch.setattr(tv_aa, "_apply_op", real)


def _chi2(samples, expected: dict):
    """p-value of the counts of ``samples`` against ``expected`` probabilities, categories
    with fewer than 5 expected draws pooled."""
    n, counts = len(samples), collections.Counter(samples)
    assert set(counts) <= set(expected), set(counts) - set(expected)
    big = [k for k, p in expected.items() if p * n >= 5]
    obs = [counts[k] for k in big]
    exp = [expected[k] * n for k in big]
    rest = n - sum(obs)
    if rest or n - sum(exp) > 1e-6:
        obs.append(rest)
        exp.append(n - sum(exp))
    return chisquare(obs, exp).pvalue


def _op_distribution(space, bin_probs):
    """{(op, value): probability} of one uniform op pick, its bin drawn from ``bin_probs``
    (None: the op's fixed magnitude), signed ops negated half the time."""
    dist = collections.defaultdict(float)
    for op, (mags, signed) in space.items():
        picks = [(0.0, 1.0)] if mags is None else [(float(mags[i]), p) for i, p in bin_probs]
        for v, p in picks:
            for s, ps in (((v, 0.5), (-v, 0.5)) if signed else ((v, 1.0),)):
                dist[(op, s)] += p * ps / len(space)
    return dist


N = 10_000


def test_trivialaugment_draws_follow_torchvision():
    space = P.augmentation_space("trivialaugment", 31)
    rng = np.random.default_rng(0)
    ta = P.TrivialAugmentWide()
    draws = [ta.sample(rng, 32, 32)[0] for _ in range(N)]
    assert _chi2(draws, _op_distribution(space, [(i, 1 / 31) for i in range(31)])) > 1e-3


def test_randaugment_draws_follow_torchvision():
    space = P.augmentation_space("randaugment", 31, (32, 40))
    rng = np.random.default_rng(1)
    ra = P.RandAugment(num_ops=2, magnitude=9)
    draws = [op for _ in range(N // 2) for op in ra.sample(rng, 32, 40)]
    assert _chi2(draws, _op_distribution(space, [(9, 1.0)])) > 1e-3


def test_autoaugment_draws_follow_torchvision():
    """Each sub-policy with probability 1/25, each of its ops applied with its probability and
    negated half the time where signed: the whole plan's distribution."""
    for policy in ("imagenet", "cifar10", "svhn"):
        space = P.augmentation_space("autoaugment", 10, (32, 32))
        expected = collections.defaultdict(float)
        for sub in P.autoaugment_policies(policy):
            options = []
            for op, p, b in sub:
                mags, signed = space[op]
                v = 0.0 if b is None else float(mags[b])
                on = [((op, v), p / 2), ((op, -v), p / 2)] if signed else [((op, v), p)]
                options.append(on + [(None, 1 - p)])
            for a, pa in options[0]:
                for b, pb in options[1]:
                    expected[tuple(x for x in (a, b) if x)] += pa * pb / 25
        rng = np.random.default_rng(2)
        aa = P.AutoAugment(policy)
        draws = [tuple(aa.sample(rng, 32, 32)) for _ in range(N)]
        assert _chi2(draws, expected) > 1e-3, policy


def test_augmix_draws_follow_torchvision():
    space = P.augmentation_space("augmix", 10, (32, 32))
    rng = np.random.default_rng(3)
    am = P.AugMix(severity=3)
    depths, ops = [], []
    for _ in range(N // 3):
        m, w, chains = am.sample(rng, 32, 32)
        assert np.isclose(m.sum(), 1) and np.isclose(w.sum(), m[1], rtol=1e-5)
        depths += [len(c) for c in chains]
        ops += [op for c in chains for op in c]
    assert _chi2(depths, {1: 1 / 3, 2: 1 / 3, 3: 1 / 3}) > 1e-3
    assert _chi2(ops, _op_distribution(space, [(i, 1 / 3) for i in range(3)])) > 1e-3


def test_same_rng_same_image():
    img = photo(40, 40)
    for policy in (P.TrivialAugmentWide(), P.AugMix(), P.RandAugment(), P.AutoAugment()):
        a = policy(img, np.random.default_rng(7))
        np.testing.assert_array_equal(a, policy(img, np.random.default_rng(7)))


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="RandAugment magnitude 31 is not a bin"):
        P.RandAugment(magnitude=31, num_magnitude_bins=31)
    with pytest.raises(ValueError, match=r"AugMix severity must be in \[1, 10\], got 11"):
        P.AugMix(severity=11)
