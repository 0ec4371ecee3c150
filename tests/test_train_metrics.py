"""Top-k error with the stable tie rule, and AverageMeter."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import minidl
from minidl.train import AverageMeter, target_rank, topk_correct, topk_error

from conftest import require


def _rank_by_stable_sort(scores, target):
    """Independent definition: the target's position in a stable sort by descending score."""
    ranks = []
    for row, t in zip(scores, target):
        order = sorted(range(len(row)), key=lambda j: -row[j])  # Python's sort is stable
        ranks.append(order.index(t))
    return np.array(ranks)


def test_ties_by_hand():
    logits = np.array([[1.0, 1.0, 1.0],    # target 1 ties with class 0 (lower index first)
                       [1.0, 1.0, 1.0],    # target 0 wins the tie
                       [0.0, 2.0, 2.0],    # target 2 after class 1
                       [3.0, 2.0, 1.0]])   # target 2, clear third
    target = np.array([1, 0, 2, 2])
    np.testing.assert_array_equal(target_rank(logits, target), [1, 0, 1, 2])
    assert topk_error(logits, target, ks=(1, 2, 3)) == [0.75, 0.25, 0.0]
    assert topk_correct(logits, target, ks=(1, 2)) == [1, 3]
    # k above the number of classes is clipped: every sample is correct
    assert topk_error(logits, target, ks=(5,)) == [0.0]


def test_nan_target_score_is_an_error():
    logits = np.array([[np.nan, 0.0], [np.nan, 0.0]])
    assert topk_error(logits, np.array([0, 1]), ks=(1, 2)) == [0.5, 0.5]


@given(data=st.data(), n=st.integers(1, 6), c=st.integers(1, 7))
def test_rank_equals_stable_sort_position(data, n, c):
    scores = np.array(data.draw(st.lists(st.lists(st.integers(-2, 2), min_size=c, max_size=c),
                                         min_size=n, max_size=n)), dtype=np.float32)
    target = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    ref = _rank_by_stable_sort(scores, target)
    np.testing.assert_array_equal(target_rank(scores, target), ref)
    for k in (1, 2, 5):
        assert topk_error(scores, target, ks=(k,))[0] == pytest.approx(np.mean(ref >= k))


def test_accepts_tensors_and_matches_torch_topk_without_ties():
    torch = require("torch")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 10)).astype(np.float32)
    target = rng.integers(0, 10, 50)
    mine = topk_error(minidl.Tensor(logits), minidl.Tensor(target), ks=(1, 5))
    top = torch.tensor(logits).topk(5, dim=1).indices.numpy()
    ref1 = np.mean(top[:, 0] != target)
    ref5 = np.mean([t not in row for t, row in zip(target, top)])
    assert mine == pytest.approx([ref1, ref5])


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        topk_error(np.zeros(3), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="range|lie in"):
        topk_error(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(TypeError, match="integer"):
        topk_error(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="empty"):
        topk_error(np.zeros((0, 3)), np.zeros(0, np.int64))


def test_average_meter():
    m = AverageMeter("loss")
    assert np.isnan(m.avg)
    m.update(1.0, n=3)
    m.update(2.0, n=1)
    assert m.avg == pytest.approx(1.25) and m.count == 4 and m.val == 2.0
    m2 = AverageMeter()
    m2.load_state_dict(m.state_dict())
    assert m2.avg == m.avg and m2.name == "loss"
    m.reset()
    assert m.count == 0
