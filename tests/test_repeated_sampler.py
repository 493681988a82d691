"""The repeated-augmentation sampler against torchvision's RASampler (its __iter__ below,
verbatim but for the permutation, which is ours: numpy's, not torch's randperm)."""
import math

import grain
import numpy as np
import pytest

from jaxvision.data import DataError
from jaxvision.tasks import build_data
from jaxvision.data.repeated_sampler import RepeatedAugmentSampler
from test_data_loader import _cfg, check_resume


def _ra_sampler(perm, num_replicas, rank, repetitions):
    """references/classification/sampler.py, RASampler.__iter__ with ``indices = perm``."""
    n = len(perm)
    num_samples = int(math.ceil(n * float(repetitions) / num_replicas))
    total_size = num_samples * num_replicas
    num_selected_samples = int(math.floor(n // 256 * 256 / num_replicas))
    indices = [ele for ele in perm.tolist() for i in range(repetitions)]
    indices += indices[: (total_size - len(indices))]
    assert len(indices) == total_size
    indices = indices[rank:total_size:num_replicas]
    assert len(indices) == num_samples
    return indices[:num_selected_samples]


@pytest.mark.parametrize("n,reps,procs", [(512, 4, 2), (700, 3, 2), (300, 2, 3), (256, 5, 1)])
def test_epochs_equal_torchvisions_rasampler(n, reps, procs):
    for epoch in range(2):
        for rank in range(procs):
            s = RepeatedAugmentSampler(n, reps, grain.sharding.ShardOptions(rank, procs, True), 7)
            want = _ra_sampler(s.permutation(epoch), procs, rank, reps)
            assert s.epoch_indices(epoch, rank) == want
            assert s.per_epoch == len(want)  # torchvision's len(sampler)


def test_each_image_k_times_across_two_processes():
    n, reps = 512, 4
    seen = []
    for rank in range(2):
        s = RepeatedAugmentSampler(n, reps, grain.sharding.ShardOptions(rank, 2, True), 0)
        seen.append(s.epoch_indices(0, rank))
    counts = np.bincount(seen[0] + seen[1], minlength=n)
    assert set(counts[counts > 0]) == {reps} and counts.sum() == n
    # the copies are dealt out round-robin: half of each image's copies on each process
    assert set(np.bincount(seen[0], minlength=n)[counts > 0]) == {reps // 2}


def test_loader_copies_differ_and_resume_mid_epoch():
    c = _cfg()
    c.shapes.num_train, c.repeated_augment = 512, 4
    data = build_data(c, "resnet18")
    it = iter(data.train_loader(seed=1))
    first = next(it)
    # positions 0 and 1 of one process: two copies of one image, augmented apart
    assert first["label"][0] == first["label"][1]
    assert not np.array_equal(first["image"][0], first["image"][1])
    check_resume(data, 1, 31)  # past the 256-record epoch (32 batches of 8)


def test_too_few_records_is_named():
    c = _cfg()
    c.repeated_augment = 3  # 64 records: none left after torchvision's // 256 * 256
    with pytest.raises(DataError, match="data.repeated_augment: .* needs >= 256"):
        build_data(c, "resnet18").train_loader(seed=0)
