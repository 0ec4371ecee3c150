"""Sizes, groups and output sizes are integers where they enter: a float (even 2.0) is a
TypeError naming the argument, never truncated; a bool tensor is refused by relu."""
import numpy as np
import pytest

import minidl
import minidl.functional as F
from minidl import Tensor

X = Tensor(np.ones((1, 2, 4, 4), np.float32))
W = Tensor(np.ones((2, 1, 3, 3), np.float32))


@pytest.mark.parametrize("call, match", [
    (lambda: F.conv2d(X, W, groups=2.0), "groups"),
    (lambda: Tensor(np.ones(6)).reshape(3, 2.0), "reshape"),
    (lambda: Tensor(np.ones(6)).view((2.5, 2)), "reshape"),
    (lambda: F.adaptive_avg_pool2d(X, 2.5), "output_size"),
    (lambda: F.adaptive_max_pool2d(X, (2, 1.5)), "output_size"),
    (lambda: minidl.zeros(2.5), "shape"),
    (lambda: minidl.ones(2, 3.0), "shape"),
    (lambda: F.relu(Tensor(np.ones(3, bool))), "bool"),
])
def test_non_integer_arguments_raise_type_error_naming_them(call, match):
    with pytest.raises(TypeError, match=match):
        call()


def test_integer_arguments_still_work():
    assert F.conv2d(X, W, groups=np.int64(2)).shape == (1, 2, 2, 2)
    assert Tensor(np.ones(6)).reshape(-1, np.int32(2)).shape == (3, 2)
    assert F.adaptive_avg_pool2d(X, (2, None)).shape == (1, 2, 2, 4)
    assert minidl.zeros((2, 3)).shape == (2, 3)
    assert F.relu(Tensor(np.array([-1, 2]))).tolist() == [0, 2]
    with pytest.raises(ValueError, match="non-negative"):
        minidl.zeros(-1)
