"""Small models, data and a stand-in loader for the training-stack tests (test_optim*,
test_lr_scheduler*, test_train*, test_checkpoint*). Importable from a subprocess too (the resume
test runs scripts that put this directory on sys.path).

The Tiny* modules are built from minidl.Tensor ops and Parameters only (the optimizer tests do
not depend on minidl.nn layers); ``nn_mlp`` and the CNN tests use the real layers.
"""
import numpy as np

import minidl
from minidl import random as mrandom
from minidl.data import Dataset
from minidl.nn import Module, Parameter, init


class TinyLinear(Module):
    def __init__(self, n_in, n_out, bias_name="bias"):
        super().__init__()
        self.weight = Parameter(np.zeros((n_out, n_in), np.float32))
        init.kaiming_normal_(self.weight)
        setattr(self, bias_name, Parameter(np.zeros(n_out, np.float32)))
        self._bias_name = bias_name

    def forward(self, x):
        return x @ self.weight.T + getattr(self, self._bias_name)


class TinyDropout(Module):
    """Inverted dropout drawing its mask from minidl.random (as nn.Dropout does)."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = 1.0 - self.p
        mask = mrandom.bernoulli_mask(x.shape, keep, dtype=x.dtype) / np.asarray(keep, x.dtype)
        return x * minidl.Tensor(mask, device=x.device)


class TinyReLU(Module):
    def forward(self, x):
        return x.relu()


class PReLU(Module):
    """A stand-in for nn.PReLU (same class name, so decay_groups matches it), channel-shared:
    f(y) = max(0, y) + a * min(0, y)."""

    def __init__(self, init_a=0.25):
        super().__init__()
        self.weight = Parameter(np.full(1, init_a, np.float32))

    def forward(self, x):
        return x.relu() - self.weight * (-x).relu()


class TinyMLP(Module):
    def __init__(self, n_in=8, hidden=32, n_out=4, p_drop=0.0, prelu=False):
        super().__init__()
        self.fc1 = TinyLinear(n_in, hidden)
        self.act = PReLU() if prelu else TinyReLU()
        self.drop = TinyDropout(p_drop)
        self.fc2 = TinyLinear(hidden, n_out)

    def forward(self, x):
        return self.fc2(self.drop(self.act(self.fc1(x))))


def cross_entropy(logits, target):
    """Mean cross-entropy from Tensor ops (a stable log-softmax; one-hot gather)."""
    z = logits - minidl.Tensor(logits.data.max(axis=1, keepdims=True))
    logp = z - z.exp().sum(axis=1, keepdims=True).log()
    t = np.asarray(minidl.backend.to_numpy(getattr(target, "data", target)))
    onehot = np.zeros(logits.shape, dtype=logits.dtype)
    onehot[np.arange(len(t)), t] = 1
    return -(logp * minidl.Tensor(onehot, device=logits.device)).sum() / len(t)


def blobs(n_per_class=32, n_classes=4, dim=8, seed=0, spread=0.6):
    """A separable generated problem: Gaussian blobs around random unit-ish centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (n_classes, dim)) * 2.0
    x = np.concatenate([c + spread * rng.normal(0, 1, (n_per_class, dim)) for c in centres])
    y = np.repeat(np.arange(n_classes), n_per_class)
    return x.astype(np.float32), y.astype(np.int64)


class ArrayDataset(Dataset):
    """In-memory (x, y) arrays as a minidl.data Dataset."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def nn_mlp(n_in=8, hidden=32, n_out=4, p_drop=0.0, batchnorm=False, prelu=False):
    """An MLP from minidl.nn layers (Linear, optional BatchNorm1d, ReLU or PReLU, Dropout)."""
    from minidl import nn
    layers = [nn.Linear(n_in, hidden)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.PReLU() if prelu else nn.ReLU(), nn.Dropout(p_drop), nn.Linear(hidden, n_out)]
    return nn.Sequential(*layers)


def bars(n_per_class=16, size=8, seed=0):
    """A tiny generated image problem: 3 classes of 1x(size)x(size) images holding a horizontal
    bar, a vertical bar or a diagonal, at a random place, plus noise."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for cls in range(3):
        for _ in range(n_per_class):
            img = rng.normal(0, 0.2, (1, size, size))
            k = rng.integers(1, size - 1)
            if cls == 0:
                img[0, k, :] += 1.0
            elif cls == 1:
                img[0, :, k] += 1.0
            else:
                d = np.arange(size)
                img[0, d, (d + k) % size] += 1.0
            xs.append(img)
            ys.append(cls)
    return np.stack(xs).astype(np.float32), np.asarray(ys, dtype=np.int64)
