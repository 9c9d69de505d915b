"""Legibility of generated 8x8 digits: the share a digit classifier labels with confidence >= 0.9.

A small CNN is trained on the first 1,500 of scikit-learn's digits (`meanflow.data.digits`, pixels in
[-1, 1]; seeded, every call gives the same weights) with one-pixel shifts as augmentation, and with
outlier exposure (Hendrycks et al., ICLR 2019): on non-digits (uniform noise; pixel-wise averages of
two to five digits of different classes, i.e. blobs and overlaid strokes) its target is the uniform
distribution, so that junk gets low confidence instead of an arbitrary confident label. A generated
image [1, 8, 8] counts as *legible* when the classifier's largest softmax probability is at least
``threshold`` (0.9). The same share for the 297 held-out real digits (test split)
is the reference: ``ratio = share(samples) / share(real)``; blobs and strokes between two digits get low
confidence, clean digits high.

    clf = train_digit_classifier()
    report = legibility_report(samples, clf)  # {"legible": 0.83, "legible_real": 0.97, "ratio": 0.86, ...}
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

THRESHOLD = 0.9


class DigitClassifier(nn.Module):
    """x [B, 1, 8, 8] in [-1, 1] -> logits [B, 10]: two 3x3 convolutions (16, 32 channels), 2x2 max
    pooling, a 64-unit hidden layer with dropout 0.25."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)
        self.drop = nn.Dropout(0.25)

    def forward(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.fc2(self.drop(F.relu(self.fc1(h.flatten(1)))))


def _shift(x: Tensor, gen: torch.Generator) -> Tensor:
    """Each image moved by (dy, dx) in {-1, 0, 1}^2, the border filled with background (-1)."""
    b = x.shape[0]
    d = torch.randint(-1, 2, (b, 2), generator=gen)
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    rows = torch.arange(8).view(1, 8, 1) + 1 - d[:, 0].view(b, 1, 1)
    cols = torch.arange(8).view(1, 1, 8) + 1 - d[:, 1].view(b, 1, 1)
    idx = torch.arange(b).view(b, 1, 1)
    return padded[idx, 0, rows, cols].unsqueeze(1)


def outliers(x: Tensor, y: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """`n` non-digits [n, 1, 8, 8]: half uniform noise on [-1, 1], half pixel-wise means of k in {2..5}
    digits of `x` [N, 1, 8, 8] with pairwise different labels `y` [N]."""
    noise = torch.rand(n // 2, 1, 8, 8, generator=gen) * 2 - 1
    m = n - n // 2
    ks = torch.randint(2, 6, (m,), generator=gen)
    by_class = [torch.nonzero(y == c).flatten() for c in range(10)]
    mixes = []
    for k in ks.tolist():
        classes = torch.randperm(10, generator=gen)[:k].tolist()
        picks = [by_class[c][torch.randint(len(by_class[c]), (1,), generator=gen)] for c in classes]
        mixes.append(x[torch.cat(picks)].mean(0))
    return torch.cat([noise, torch.stack(mixes)])


def train_digit_classifier(seed: int = 0, epochs: int = 25, batch_size: int = 100) -> DigitClassifier:
    """The classifier trained on the digits' train split (Adam 3e-3, shifted copies; outlier batches
    of half the size with the uniform target), in eval mode.

    Runs under a forked RNG; the result depends only on `seed` (and the torch build).
    """
    from meanflow.data.digits import load_digits

    data = load_digits("train")
    x, y = data.x, data.y
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DigitClassifier()
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        net.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), batch_size):
                idx = order[i:i + batch_size]
                junk = _shift(outliers(x, y, len(idx) // 2, gen), gen)
                logits = net(torch.cat([_shift(x[idx], gen), junk]))
                inside, outside = logits[:len(idx)], logits[len(idx):]
                # outlier exposure: cross-entropy to the uniform distribution = mean negative log-softmax
                loss = F.cross_entropy(inside, y[idx]) - 0.5 * outside.log_softmax(-1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return net.eval().requires_grad_(False)


@functools.lru_cache(maxsize=1)
def default_classifier() -> DigitClassifier:
    """`train_digit_classifier()` (seed 0), trained once per process (every call gives the same
    weights; a test session or a script measuring many runs pays ~10-40 s once)."""
    return train_digit_classifier()


@torch.no_grad()
def confidences(images: Tensor, clf: DigitClassifier) -> tuple[Tensor, Tensor]:
    """Largest softmax probability [N] and its label [N] of images [N, 1, 8, 8] (values clamped to
    [-1, 1], as a sample is saved)."""
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
        raise ValueError(f"expected 8x8 digit images [N, 1, 8, 8], got {list(images.shape)}")
    probs = torch.cat([clf(b.float().clamp(-1, 1)).softmax(-1) for b in images.cpu().split(500)])
    conf, label = probs.max(-1)
    return conf, label


def legible_share(images: Tensor, clf: DigitClassifier, threshold: float = THRESHOLD) -> float:
    """Share of `images` [N, 1, 8, 8] whose top class has probability >= `threshold`."""
    conf, _ = confidences(images, clf)
    return float((conf >= threshold).float().mean())


def legibility_report(images: Tensor, clf: DigitClassifier | None = None,
                      threshold: float = THRESHOLD) -> dict[str, float | list[int]]:
    """Legible share of `images`, the same for the held-out real digits, their ratio, and how the
    legible samples spread over the ten classes (counts [10])."""
    from meanflow.data.digits import load_digits

    clf = clf if clf is not None else default_classifier()
    conf, label = confidences(images, clf)
    legible = conf >= threshold
    real = legible_share(load_digits("test").x, clf, threshold)
    share = float(legible.float().mean())
    return {"legible": share, "legible_real": real, "ratio": share / real if real > 0 else 0.0,
            "mean_confidence": float(conf.mean()), "threshold": threshold,
            "legible_per_class": torch.bincount(label[legible], minlength=10).tolist()}
