"""PyTorch's MNIST example (pytorch/examples, mnist/main.py) ported to minidl.

The same network (two 3x3 convolutions, max-pool, dropout, two fully connected layers,
log_softmax + nll_loss), the same optimizer (Adadelta, lr 1.0) and schedule (StepLR, gamma 0.7
per epoch), the same flags. docs/from_pytorch.md puts the two versions side by side.

Data, never downloaded:

* default: the built-in GeneratedShapes (10 drawn shape classes) at 28x28, converted to
  grayscale -- a stand-in with MNIST's tensor shapes, not MNIST;
* ``--data PATH``: real MNIST on disk, either a folder with the four original IDX files
  (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, optionally ``.gz``; e.g. torchvision's ``MNIST/raw``), or an
  ``.npz`` with ``x_train, y_train, x_test, y_test`` (Keras' ``mnist.npz``).

The default is short (2 epochs on 100 generated images per class); PyTorch's defaults are
``--epochs 14`` on the 60,000 MNIST images.
"""
import argparse
import gzip
import math
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import minidl  # noqa: E402
import minidl.functional as F  # noqa: E402
import minidl.nn as nn  # noqa: E402
import minidl.optim as optim  # noqa: E402
from minidl.data import DataLoader, Dataset, GeneratedShapes, transforms  # noqa: E402
from minidl.optim.lr_scheduler import StepLR  # noqa: E402


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = F.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


def train(args, model, device, train_loader, optimizer, epoch):
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        if batch_idx % args.log_interval == 0:
            print('Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}'.format(
                epoch, batch_idx * len(data), len(train_loader.dataset),
                100. * batch_idx / len(train_loader), loss.item()))
            if args.dry_run:
                break


def test(model, device, test_loader):
    model.eval()
    test_loss = 0
    correct = 0
    with minidl.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction='sum').item()  # sum up batch loss
            pred = output.argmax(dim=1, keepdim=True)  # get the index of the max log-probability
            correct += pred.eq(target.view_as(pred)).sum().item()

    test_loss /= len(test_loader.dataset)

    print('\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)\n'.format(
        test_loss, correct, len(test_loader.dataset),
        100. * correct / len(test_loader.dataset)))
    return test_loss, correct / len(test_loader.dataset)


# -- data (torchvision.datasets.MNIST reads the same files; nothing is downloaded) --------------

class MNIST(Dataset):
    """MNIST from local files: a folder of the IDX files (optionally gzipped) or an .npz."""

    FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

    def __init__(self, path, train=True, transform=None):
        self.transform = transform
        if os.path.isfile(path) and path.endswith(".npz"):
            with np.load(path) as z:
                x, y = (z["x_train"], z["y_train"]) if train else (z["x_test"], z["y_test"])
        elif os.path.isdir(path):
            x, y = (_read_idx(_find(path, name)) for name in self.FILES[train])
        else:
            raise FileNotFoundError(f"--data {path!r}: expected a folder with the MNIST IDX "
                                    "files or an .npz with x_train/y_train/x_test/y_test")
        if x.ndim != 3 or x.shape[0] != y.shape[0]:
            raise ValueError(f"{path}: images of shape {x.shape} and labels of shape {y.shape} "
                             "are not MNIST's (N, 28, 28) and (N,)")
        self.data, self.targets = x.astype(np.uint8), y.astype(np.int64)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        img = self.data[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])


def _find(folder, name):
    for cand in (name, name + ".gz", name.replace("-idx", ".idx"),
                 name.replace("-idx", ".idx") + ".gz"):
        p = os.path.join(folder, cand)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(f"{folder}: no {name} (or {name}.gz) in this folder")


def _read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(dims):
        raise ValueError(f"{path}: header says {dims}, found {data.size} values")
    return data.reshape(dims)


def _gray(img, rng=None):
    """PIL RGB -> 'L' (ITU-R 601-2 luma), what MNIST's single channel is."""
    return img.convert("L")


def _positive_int(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _non_negative_int(s):
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {s}")
    return v


def _positive_float(s):
    v = float(s)
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {s}")
    return v


def main(argv=None):
    # Training settings
    parser = argparse.ArgumentParser(
        description='minidl MNIST Example (a port of PyTorch\'s mnist/main.py)',
        epilog='Without --data: GeneratedShapes drawn at 28x28 in grayscale (no download).')
    parser.add_argument('--batch-size', type=_positive_int, default=64, metavar='N',
                        help='input batch size for training (default: 64)')
    parser.add_argument('--test-batch-size', type=_positive_int, default=1000, metavar='N',
                        help='input batch size for testing (default: 1000)')
    parser.add_argument('--epochs', type=_positive_int, default=2, metavar='N',
                        help='number of epochs to train (default: 2; PyTorch\'s: 14)')
    parser.add_argument('--lr', type=_positive_float, default=1.0, metavar='LR',
                        help='learning rate (default: 1.0)')
    parser.add_argument('--gamma', type=_positive_float, default=0.7, metavar='M',
                        help='Learning rate step gamma (default: 0.7)')
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'],
                        help='device to train on (default: cpu)')
    parser.add_argument('--dry-run', action='store_true', default=False,
                        help='quickly check a single pass')
    parser.add_argument('--seed', type=_non_negative_int, default=1, metavar='S',
                        help='random seed (default: 1)')
    parser.add_argument('--log-interval', type=_positive_int, default=10, metavar='N',
                        help='how many batches to wait before logging training status')
    parser.add_argument('--save-model', action='store_true', default=False,
                        help='For Saving the current Model')
    parser.add_argument('--data', metavar='PATH', default=None,
                        help='local MNIST: a folder with the IDX files or an .npz (default: '
                             'generated shapes, 28x28 grayscale)')
    parser.add_argument('--n-per-class', type=_positive_int, default=100, metavar='N',
                        help='generated images per class for training (default: 100; a fifth '
                             'as many for testing)')
    args = parser.parse_args(argv)
    device = args.device

    minidl.manual_seed(args.seed)

    train_kwargs = {'batch_size': args.batch_size, 'shuffle': True, 'seed': args.seed}
    test_kwargs = {'batch_size': args.test_batch_size}

    if args.data is not None:
        transform = transforms.Compose([
            transforms.ToArray(),
            transforms.Normalize((0.1307,), (0.3081,))
            ])
        dataset1 = MNIST(args.data, train=True, transform=transform)
        dataset2 = MNIST(args.data, train=False, transform=transform)
    else:
        transform = transforms.Compose([
            _gray,
            transforms.ToArray(),
            transforms.Normalize((0.5,), (0.25,))
            ])
        dataset1 = GeneratedShapes(split='train', n_per_class=args.n_per_class, image_size=28,
                                   transform=transform)
        dataset2 = GeneratedShapes(split='val', n_per_class=max(1, args.n_per_class // 5),
                                   image_size=28, transform=transform)
    train_loader = DataLoader(dataset1, **train_kwargs)
    test_loader = DataLoader(dataset2, **test_kwargs)

    model = Net().to(device)
    optimizer = optim.Adadelta(model.parameters(), lr=args.lr)

    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
    for epoch in range(1, args.epochs + 1):
        train(args, model, device, train_loader, optimizer, epoch)
        test_loss, accuracy = test(model, device, test_loader)
        scheduler.step()

    if args.save_model:
        minidl.save(model.state_dict(), "mnist_cnn.pt")
    return test_loss, accuracy


if __name__ == '__main__':
    main()
