"""The papers' test-time methods: dense (fully-convolutional) multi-scale evaluation and
multi-scale 10-view evaluation (minidl.train.views, evaluate's options).

The central check is the issue's: at the training size the dense score equals the single-crop
score, for AlexNet (scaled), a PReLU-net and the ResNets; exactly up to float64 rounding."""
import numpy as np
import pytest

import minidl
from minidl import models
from minidl.data import transforms as T
from minidl.train import evaluate
from minidl.train.views import (dense_probabilities, multi_view_probabilities, resize_batch,
                                softmax_positions, ten_crop_batch)


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _forward(model, x):
    with minidl.no_grad():
        return minidl.backend.to_numpy(model(minidl.Tensor(x)).data)


def _dense(model, x):
    with minidl.no_grad():
        return minidl.backend.to_numpy(model.dense_forward(minidl.Tensor(x)).data)


def _nets():
    minidl.manual_seed(3)
    return {
        "alexnet": (models.alexnet(num_classes=7, width=1 / 16, input_size=99), 99),
        "alexnet_one_gpu": (models.alexnet_one_gpu(num_classes=5, width=1 / 16,
                                                   input_size=67), 67),
        "prelu_net14": (models.prelu_net14("prelu", num_classes=6, width=1 / 32), 48),
        "resnet20": (models.resnet20(), 32),
        "resnet18": (models.resnet18(num_classes=4, width=1 / 16), 40),
    }


@pytest.mark.parametrize("name", list(_nets()))
def test_dense_score_at_training_size_equals_single_crop_float64(name):
    model, size = _nets()[name]
    model.double().eval()
    x = np.random.default_rng(0).standard_normal((3, 3, size, size))
    single = _forward(model, x)
    dense = _dense(model, x)
    assert dense.shape == single.shape + (1, 1)
    np.testing.assert_allclose(dense[:, :, 0, 0], single, rtol=1e-12, atol=1e-12)


def test_dense_score_float32_is_tight():
    minidl.manual_seed(4)
    model = models.alexnet(num_classes=7, width=1 / 16, input_size=99).eval()
    x = np.random.default_rng(1).standard_normal((2, 3, 99, 99)).astype(np.float32)
    np.testing.assert_allclose(_dense(model, x)[:, :, 0, 0], _forward(model, x), rtol=1e-4,
                               atol=1e-5)


def test_alexnet_dense_map_has_one_score_per_window_and_rejects_small_inputs():
    minidl.manual_seed(5)
    model = models.alexnet(num_classes=3, width=1 / 16, input_size=67).eval()
    # 67 px -> a 1x1 pooled map; every 32 more pixels add one window position (stride 32)
    x = np.zeros((1, 3, 67 + 64, 67 + 32), np.float32)
    assert _dense(model, x).shape == (1, 3, 3, 2)
    with pytest.raises(ValueError, match="at least 67 px"):
        _dense(model, np.zeros((1, 3, 60, 60), np.float32))


def test_softmax_positions_averages_probabilities_over_positions():
    s = np.random.default_rng(2).standard_normal((2, 4, 3, 5))
    want = np.stack([_softmax(s[:, :, i, j]) for i in range(3) for j in range(5)]).mean(0)
    np.testing.assert_allclose(softmax_positions(s), want, rtol=1e-12)
    np.testing.assert_allclose(softmax_positions(s[:, :, 0, 0]), _softmax(s[:, :, 0, 0]),
                               rtol=1e-12)


def test_resize_batch_keeps_the_training_size_and_resizes_the_shorter_side():
    x = np.random.default_rng(3).standard_normal((2, 3, 20, 30)).astype(np.float32)
    assert resize_batch(x, 20) is x
    y = resize_batch(x, 40)
    assert y.shape == (2, 3, 40, 60) and y.dtype == np.float32
    assert resize_batch(x.transpose(0, 1, 3, 2), 10).shape == (2, 3, 15, 10)
    # a constant image stays constant under bilinear resizing
    np.testing.assert_allclose(resize_batch(np.full((1, 1, 8, 8), 2.5, np.float32), 13),
                               2.5, rtol=1e-6)


def test_dense_probabilities_average_scales_and_flips():
    minidl.manual_seed(6)
    model = models.resnet20(num_classes=5).double().eval()
    x = np.random.default_rng(4).standard_normal((2, 3, 32, 32))
    got = dense_probabilities(model, x, (32, 40), flip=True)
    views = [x, x[..., ::-1], resize_batch(x, 40), resize_batch(x, 40)[..., ::-1]]
    want = np.mean([_softmax(_forward(model, np.ascontiguousarray(v))) for v in views], axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_ten_crop_batch_matches_the_tencrop_transform():
    x = np.random.default_rng(5).standard_normal((2, 3, 11, 13)).astype(np.float32)
    got = ten_crop_batch(x, 7)
    assert got.shape == (2, 10, 3, 7, 7)
    for i in range(2):
        np.testing.assert_array_equal(got[i], T.TenCrop(7)(x[i]))


def test_multi_view_probabilities_at_several_scales():
    minidl.manual_seed(7)
    model = models.prelu_net14("relu", num_classes=4, width=1 / 32).double().eval()
    x = np.random.default_rng(6).standard_normal((2, 3, 40, 44))
    got = multi_view_probabilities(model, x, 36, (40, 48))
    per_scale = []
    for s in (40, 48):
        v = ten_crop_batch(resize_batch(x, s), 36)
        per_scale.append(np.mean([_softmax(_forward(model, v[:, k])) for k in range(10)], 0))
    np.testing.assert_allclose(got, np.mean(per_scale, axis=0), rtol=1e-10)


def _batches(n_batches=2, size=32, classes=5, seed=8):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((3, 3, size, size)), rng.integers(0, classes, 3))
            for _ in range(n_batches)]


def test_evaluate_dense_at_training_size_equals_plain_evaluate():
    minidl.manual_seed(9)
    model = models.resnet20(num_classes=5).double()
    loader = _batches()
    plain = evaluate(model, loader, ks=(1, 2))
    dense = evaluate(model, loader, ks=(1, 2), dense_scales=(32,))
    assert dense["samples"] == plain["samples"] == 6
    assert dense["top1"] == plain["top1"] and dense["top2"] == plain["top2"]
    assert dense["loss"] == pytest.approx(plain["loss"], rel=1e-12)
    assert model.training  # mode restored


def test_evaluate_flip_and_multiscale_views_by_hand():
    minidl.manual_seed(10)
    model = models.resnet20(num_classes=5).double()
    loader = _batches(n_batches=1)
    x, y = loader[0]
    model.eval()
    p = (_softmax(_forward(model, x)) + _softmax(_forward(model, x[..., ::-1].copy()))) / 2
    r = evaluate(model, loader, flip=True, ks=(1,))
    assert r["loss"] == pytest.approx(float(-np.log(p[np.arange(3), y]).mean()), rel=1e-10)
    assert r["top1"] == pytest.approx(float((p.argmax(1) != y).mean()))
    p = multi_view_probabilities(model, x, 28, (32, 36))
    r = evaluate(model, loader, ten_crop_scales=(32, 36), crop_size=28, ks=(1,))
    assert r["loss"] == pytest.approx(float(-np.log(p[np.arange(3), y]).mean()), rel=1e-10)


def test_evaluate_rejects_conflicting_test_time_options():
    model = models.resnet20(num_classes=5)
    loader = _batches(n_batches=1)
    with pytest.raises(ValueError, match="choose one"):
        evaluate(model, loader, dense_scales=(32,), ten_crop_scales=(32,), crop_size=28)
    with pytest.raises(ValueError, match="needs crop_size"):
        evaluate(model, loader, ten_crop_scales=(32,))
    with pytest.raises(ValueError, match="only with ten_crop_scales"):
        evaluate(model, loader, crop_size=28)
    with pytest.raises(ValueError, match="positive integers"):
        evaluate(model, loader, dense_scales=(32, 0))
    with pytest.raises(ValueError, match="smaller than crop_size"):
        evaluate(model, loader, ten_crop_scales=(24,), crop_size=28)
