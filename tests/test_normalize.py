"""Running statistics against NumPy over the whole stream, and the two transforms."""

import numpy as np
import pytest

from fleetrl.normalize import RunningStats


def test_batched_updates_match_the_statistics_of_the_whole_stream():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 2, 3)).astype(np.float32) for n in (1, 7, 64, 5)]
    stats = RunningStats.create((2, 3))
    for batch in batches:
        stats = stats.update(batch)
    stream = np.concatenate(batches)
    # the prior (mean 0, var 1, count 1e-4) weighs 1e-4 of one sample
    np.testing.assert_allclose(stats.mean, stream.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.var, stream.var(0), rtol=1e-4)
    assert float(stats.count) == pytest.approx(len(stream) + 1e-4)


def test_normalize_centres_scales_and_clips_and_scale_keeps_the_sign():
    stats = RunningStats.create((1,)).update(np.array([[1.0], [3.0]], np.float32))  # mean 2, var 1
    np.testing.assert_allclose(stats.normalize(np.array([2.0, 4.0, 100.0]), clip=5.0),
                               [0.0, 2.0, 5.0], atol=1e-3)  # fmt: skip
    np.testing.assert_allclose(stats.scale(np.array([-4.0, 4.0, 100.0]), clip=10.0),
                               [-4.0, 4.0, 10.0], atol=1e-3)  # fmt: skip
