"""Reference classifiers that calibrate a corpus's difficulty (used on the synthetic corpus).

- `logistic_regression_baseline`: multinomial logistic regression (numpy) on utterance-mean MFCCs: what
  the level cues alone give.
- `temporal_baseline`: a small CNN + GRU (plain PyTorch) on the full (F, T) MFCC sequence: what the
  temporal cues give.
Both standardise each MFCC coefficient with training statistics and report UA (mean per-class recall) and
WA (accuracy) on the evaluation set.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np


def unweighted_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean of per-class recalls over the classes present in y_true."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    recalls = [np.mean(y_pred[y_true == c] == c) for c in range(n_classes) if np.any(y_true == c)]
    return float(np.mean(recalls))


def _scores(y_true, y_pred, n_classes) -> Dict[str, float]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return {"ua": unweighted_accuracy(y_true, y_pred, n_classes), "wa": float(np.mean(y_true == y_pred))}


def _utterance_means(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.mean(axis=2) if x.ndim == 3 else x


def logistic_regression_baseline(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                                 y_test: np.ndarray, n_classes: Optional[int] = None, l2: float = 1e-3,
                                 iters: int = 2000, lr: float = 0.5) -> Dict[str, float]:
    """Softmax regression on utterance-mean features.

    x_*: (N, F, T) feature sequences (averaged over T) or (N, D) vectors; y_*: integer labels.
    Full-batch gradient descent on the L2-regularised cross entropy (convex, so deterministic).
    Returns {"ua", "wa", "train_ua"}.
    """
    xtr, xte = _utterance_means(x_train), _utterance_means(x_test)
    ytr, yte = np.asarray(y_train, dtype=np.int64), np.asarray(y_test, dtype=np.int64)
    k = int(n_classes or max(ytr.max(), yte.max()) + 1)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-8
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    n, d = xtr.shape
    w = np.zeros((d, k))
    b = np.zeros(k)
    onehot = np.eye(k)[ytr]
    for _ in range(iters):
        z = xtr @ w + b
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / n
        w -= lr * (xtr.T @ g + l2 * w)
        b -= lr * g.sum(0)
    out = _scores(yte, np.argmax(xte @ w + b, 1), k)
    out["train_ua"] = unweighted_accuracy(ytr, np.argmax(xtr @ w + b, 1), k)
    return out


def temporal_baseline(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                      x_dev: Optional[np.ndarray] = None, y_dev: Optional[np.ndarray] = None,
                      n_classes: Optional[int] = None, epochs: int = 25, batch_size: int = 32,
                      lr: float = 2e-3, seed: int = 0, threads: int = 1) -> Dict[str, float]:
    """A 2-layer CNN + bidirectional GRU on (N, F, T) MFCC sequences (CPU, plain PyTorch).

    With a dev set, the epoch with the best dev UA is the one evaluated on test (model selection never
    looks at the test set). Returns {"ua", "wa", "dev_ua", "best_epoch", "train_ua"}.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ytr = np.asarray(y_train, dtype=np.int64)
        k = int(n_classes or max(ytr.max(), np.max(y_test)) + 1)
        xtr = np.asarray(x_train, dtype=np.float32)
        mu = xtr.mean(axis=(0, 2), keepdims=True)
        sd = xtr.std(axis=(0, 2), keepdims=True) + 1e-6

        def prep(x):
            return torch.from_numpy(((np.asarray(x, dtype=np.float32) - mu) / sd)[:, None])

        f = xtr.shape[1]

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.cnn = nn.Sequential(
                    nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d((2, 1)),
                    nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d((2, 1)),
                )
                self.proj = nn.Linear(32 * (f // 4), 64)
                self.gru = nn.GRU(64, 64, batch_first=True, bidirectional=True)
                self.drop = nn.Dropout(0.3)
                self.head = nn.Linear(128, k)

            def forward(self, x):
                h = self.cnn(x)  # (B, C, F/4, T)
                b, c, ff, t = h.shape
                h = torch.relu(self.proj(h.permute(0, 3, 1, 2).reshape(b, t, c * ff)))
                h, _ = self.gru(h)
                return self.head(self.drop(h.mean(1)))

        net = Net()
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-2)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=epochs * int(np.ceil(len(ytr) / batch_size)))
        xt, yt = prep(xtr), torch.from_numpy(ytr)
        xte = prep(x_test)
        xdv = prep(x_dev) if x_dev is not None else None
        gen = torch.Generator().manual_seed(seed)

        def predict(x):
            net.eval()
            with torch.no_grad():
                return torch.cat([net(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)]).numpy()

        best = (-1.0, -1, None)
        for epoch in range(epochs):
            net.train()
            perm = torch.randperm(len(yt), generator=gen)
            for i in range(0, len(perm), batch_size):
                idx = perm[i:i + batch_size]
                xb = xt[idx]
                # light augmentation: random circular time shift
                xb = torch.roll(xb, int(torch.randint(0, xb.shape[-1], (1,), generator=gen)), dims=-1)
                loss = nn.functional.cross_entropy(net(xb), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            if xdv is not None:
                dev_ua = unweighted_accuracy(np.asarray(y_dev), predict(xdv), k)
                if dev_ua >= best[0]:
                    best = (dev_ua, epoch, {n: p.detach().clone() for n, p in net.state_dict().items()})
        if best[2] is not None:
            net.load_state_dict(best[2])
        out = _scores(np.asarray(y_test), predict(xte), k)
        out["dev_ua"] = best[0] if xdv is not None else float("nan")
        out["best_epoch"] = best[1] if xdv is not None else epochs - 1
        out["train_ua"] = unweighted_accuracy(ytr, predict(xt), k)
        return out
    finally:
        torch.set_num_threads(old_threads)
