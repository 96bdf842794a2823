"""Zero-variance groups and the count of kept groups a step can train on (MAPLE §5.2), by hand."""

import pytest

from verl_modality.algorithms.zero_variance import trainable_groups, zero_variance_groups


def test_groups_with_equal_values_by_hand():
    groups = ["a", "a", "a", "b", "b", "c", "d", "d", "e", "e"]
    values = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.5, 0.5, float("nan"), float("nan")]
    # c has one sample (no variance to speak of, as verl's filter keeps it); e's NaN is not "equal"
    assert zero_variance_groups(groups, values) == {"a", "d"}
    with pytest.raises(ValueError, match="3 group ids for 2 values"):
        zero_variance_groups(["a", "a", "b"], [1.0, 1.0])


@pytest.mark.parametrize(
    ("kept", "mini_batches", "n", "dp", "want"),
    [
        (7, 1, 4, 1, 7),  # one mini-batch, one rank: every kept group
        (7, 1, 4, 2, 7),  # 28 samples split over 2 ranks
        (7, 1, 3, 2, 6),  # 21 samples do not split over 2 ranks; 18 do
        (7, 2, 4, 1, 6),  # two equal mini-batches need an even count
        (7, 2, 3, 2, 4),  # 2 mini-batches of 2 groups x 3 = 6 samples, 3 per rank
        (1, 1, 3, 2, 0),  # 3 samples cannot split over 2 ranks: the step has nothing
        (0, 1, 4, 1, 0),
    ],
)
def test_trainable_groups_by_hand(kept, mini_batches, n, dp, want):
    k = trainable_groups(kept, mini_batches, n, dp)
    assert k == want
    if k:
        assert k % mini_batches == 0 and (k // mini_batches) * n % dp == 0
        bigger = [j for j in range(k + 1, kept + 1) if j % mini_batches == 0 and (j // mini_batches) * n % dp == 0]
        assert bigger == []


@pytest.mark.parametrize(
    ("kept", "n", "dp", "micro", "infer", "want"),
    [
        (3, 4, 1, 4, 8, 2),  # 12 samples: whole update micro-batches of 4, but not log-prob micro-batches of 8
        (3, 4, 1, 4, 4, 3),
        (7, 8, 1, 16, 8, 6),  # the CPU demo: update micro-batches of 16 samples need an even group count
        (5, 4, 2, 2, 1, 5),  # 20 samples, 10 per rank, micro-batches of 2
        (5, 4, 2, 4, 1, 4),  # 10 per rank do not split into micro-batches of 4; 8 do
        (1, 4, 1, 8, 1, 0),
    ],
)
def test_micro_batches_of_fixed_size_must_be_whole(kept, n, dp, micro, infer, want):
    assert trainable_groups(kept, 1, n, dp, micro, infer) == want


def test_trainable_groups_refuses_bad_counts():
    with pytest.raises(ValueError, match="dp_size=0"):
        trainable_groups(4, 1, 4, 0)
