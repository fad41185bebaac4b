"""The batched trainer behind the heads and ``vidfeat.train``: K heads in one pass.

Training runs K heads at once as ONE module whose parameters are stacked along a leading K axis
(``StackedHead``): a sweep over learning rate, weight decay, class weights, logit adjustment or
dropout is one pass over the features, each head with its own hyperparameters. Every head starts
from the same seed-derived initial weights, sees the same minibatches and the same dropout noise,
so head k of a sweep is trained exactly as it would be alone (up to float summation order).

Saved weights are plain tensors (``state_dict``) loadable with ``torch.load(weights_only=True)``;
the architecture is described by ``head_spec`` (JSON), never by pickled code.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidfeat.class_weights import class_weights, parse_class_weight
from vidfeat.options import check_choice, check_positive

SAMPLERS = {None: None, "none": None, "balanced": "balanced"}
DEFAULT_LR = {"linear": 1e-2, "mlp": 1e-3}


# ----------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class HeadConfig:
    """Per-head hyperparameters: everything a sweep may vary in one batched pass."""
    lr: float = 1e-3
    weight_decay: float = 1e-4
    class_weight: str = "none"          # none | balanced | effective:BETA
    logit_adjust: float = 0.0           # tau of Menon et al. (0 = off)
    dropout: float = 0.0                # MLP only

    def __post_init__(self):
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive("logit_adjust", self.logit_adjust, allow_zero=True)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        parse_class_weight(self.class_weight)


# ----------------------------------------------------------------------------------- module
class StackedHead(nn.Module):
    """K independent heads (linear when ``hidden`` is empty, else an MLP) in batched tensors.

    ``forward(x)`` maps features (B, D) to logits (K, B, C). Inputs are standardised with the
    ``mean``/``scale`` buffers (set from the training features) before the first layer.
    """

    def __init__(self, in_dim: int, n_classes: int, *, hidden: Sequence[int] = (), k: int = 1,
                 seed: int = 0, dropout: Sequence[float] | float = 0.0):
        super().__init__()
        self.dims = [int(in_dim), *map(int, hidden), int(n_classes)]
        gen = torch.Generator().manual_seed(int(seed))
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(self.dims[:-1], self.dims[1:]):
            # nn.Linear's default init, drawn once and copied to all K heads so that every head
            # of a sweep starts where it would start alone
            bound = 1 / math.sqrt(d_in)
            w = (torch.rand(d_in, d_out, generator=gen) * 2 - 1) * bound
            b = (torch.rand(d_out, generator=gen) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w.expand(k, -1, -1).clone()))
            self.biases.append(nn.Parameter(b.expand(k, -1).clone()))
        drop = torch.as_tensor(dropout, dtype=torch.float32).expand(k).clone()
        self.register_buffer("dropout", drop)
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("scale", torch.ones(in_dim))
        self.noise: torch.Generator | None = None   # dropout noise, shared by all K heads

    @property
    def k(self) -> int:
        return self.weights[0].shape[0]

    def set_standardization(self, mean, std) -> None:
        std = torch.as_tensor(np.asarray(std), dtype=torch.float32)
        self.mean.copy_(torch.as_tensor(np.asarray(mean), dtype=torch.float32))
        # constant features carry no signal; dividing by ~0 would only amplify float noise
        self.scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (x.float() - self.mean) / self.scale
        k, (d, c) = self.k, self.weights[0].shape[1:]
        # first layer: one GEMM for all K heads, since they share the input
        w0 = self.weights[0].permute(1, 0, 2).reshape(d, k * c)
        h = (h @ w0).view(-1, k, c).transpose(0, 1) + self.biases[0][:, None, :]
        for w, b in zip(self.weights[1:], self.biases[1:]):
            h = self._dropout(F.relu(h))
            h = torch.baddbmm(b[:, None, :], h, w)
        return h

    def _dropout(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training or not bool((self.dropout > 0).any()):
            return h
        # one uniform draw shared by all heads, thresholded per head: head k sees the same mask
        # in a sweep as alone
        u = torch.rand(h.shape[1:], generator=self.noise, device=h.device)
        p = self.dropout[:, None, None]
        return h * (u >= p) / (1 - p)

    def select(self, index: int) -> StackedHead:
        """A K=1 copy of head ``index`` (weights, standardisation and dropout)."""
        one = StackedHead(self.dims[0], self.dims[-1], hidden=self.dims[1:-1], k=1)
        state = {name: (t[index:index + 1] if name.startswith(("weights", "biases", "dropout"))
                        else t) for name, t in self.state_dict().items()}
        one.load_state_dict({n: t.detach().clone().cpu() for n, t in state.items()})
        return one


def head_spec(model: StackedHead) -> dict:
    """JSON description of a head's architecture (what ``build_head`` needs)."""
    return {"in_dim": model.dims[0], "hidden": model.dims[1:-1], "n_classes": model.dims[-1],
            "dropout": float(model.dropout[0])}


def build_head(spec: dict, state: dict | None = None) -> StackedHead:
    """Rebuild a K=1 head from ``head_spec`` output and (optionally) its state dict."""
    model = StackedHead(spec["in_dim"], spec["n_classes"], hidden=spec.get("hidden", ()),
                        dropout=spec.get("dropout", 0.0))
    if state is not None:
        model.load_state_dict(state)
    return model


# ----------------------------------------------------------------------------------- data
def epoch_indices(rng: np.random.Generator, repeat: np.ndarray,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """One epoch of row indices: each row ``repeat`` times, shuffled (oversampling honoured).

    With ``weights`` (class-balanced sampler), draw as many rows with replacement, with
    probability proportional to ``weights``.
    """
    total = int(repeat.sum())
    if weights is None:
        return rng.permutation(np.repeat(np.arange(len(repeat)), repeat))
    p = weights / weights.sum()
    return rng.choice(len(repeat), size=total, replace=True, p=p)


class ArraySource:
    """Training rows held in memory (on the training device): features, labels, repeat."""

    def __init__(self, X, y, repeat=None, *, device: torch.device | str = "cpu"):
        self.X = torch.as_tensor(X).to(device=device, dtype=torch.float32)
        self.y = torch.as_tensor(np.asarray(y, dtype=np.int64)).to(device)
        self.labels = np.asarray(y, dtype=np.int64)
        self.repeat = (np.ones(len(self.labels), dtype=np.int64) if repeat is None
                       else np.asarray(repeat, dtype=np.int64))
        if not (len(self.X) == len(self.labels) == len(self.repeat)):
            raise ValueError(f"features, labels and repeat differ in length: "
                             f"{len(self.X)}, {len(self.labels)}, {len(self.repeat)}")
        if self.X.ndim != 2:
            raise ValueError(f"features must be 2-D (rows x dims), got shape {tuple(self.X.shape)}")

    def __len__(self) -> int:
        return len(self.labels)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        X = self.X.double()
        return X.mean(0).cpu().numpy(), X.std(0, unbiased=False).cpu().numpy()

    def batches(self, rng, batch_size: int, weights=None) -> Iterator[tuple[torch.Tensor, ...]]:
        idx = torch.as_tensor(epoch_indices(rng, self.repeat, weights), device=self.X.device)
        for start in range(0, len(idx), batch_size):
            sel = idx[start:start + batch_size]
            yield self.X[sel], self.y[sel]

    def chunks(self, rows: int = 65536) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.X), rows):
            yield self.X[start:start + rows]


# ----------------------------------------------------------------------------------- training
@dataclass
class FitResult:
    """What ``fit_heads`` returns per head: the best state and its validation history."""
    model: StackedHead             # K=1, on CPU, best epoch's weights
    best_epoch: int                # 1-based; the last epoch when there was no validation
    best_score: tuple | None       # (select metric, -val loss) at best_epoch
    history: list = field(default_factory=list)   # per epoch: {"epoch", "train_loss", "score"}


@dataclass
class TrainSpec:
    """Options shared by all heads of one batched fit."""
    hidden: tuple = ()
    epochs: int = 50
    batch_size: int = 256
    seed: int = 0
    sampler: str | None = None
    patience: int = 5           # validation checks without improvement
    val_every: int = 100        # steps between validation checks (and at each epoch's end)

    def __post_init__(self):
        check_positive("epochs", self.epochs)
        check_positive("val_every", self.val_every)
        check_positive("batch_size", self.batch_size)
        check_positive("patience", self.patience)
        self.sampler = check_choice("sampler", self.sampler, SAMPLERS)


class _BatchedAdamW:
    """AdamW over stacked parameters with a learning rate and weight decay per head (K axis)."""

    def __init__(self, params, lr: torch.Tensor, wd: torch.Tensor, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.wd, self.betas, self.eps = list(params), lr, wd, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            shape = (-1,) + (1,) * (p.ndim - 1)
            if p.ndim == 3:   # weight matrices decay; biases do not (as in sklearn's intercept)
                p.mul_((1 - self.lr * self.wd).view(shape))
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            # p -= lr * (m / c1) / (sqrt(v / c2) + eps), in place: few passes over K heads' weights
            denom = v.sqrt().div_(math.sqrt(c2)).add_(self.eps)
            p.addcdiv_(m * (self.lr / -c1).view(shape), denom)
            p.grad = None


def class_counts(labels: np.ndarray, repeat: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows per class as training sees them (oversampling repeats included)."""
    return np.bincount(labels, weights=repeat, minlength=n_classes).astype(np.float64)


def loss_terms(configs: Sequence[HeadConfig], counts: np.ndarray, device) -> tuple[torch.Tensor, ...]:
    """(K, C) class weights and (K, C) logit offsets tau * log(prior) for the training loss."""
    cw = np.stack([class_weights(c.class_weight, counts) for c in configs])
    log_prior = np.log(np.maximum(counts / max(counts.sum(), 1), 1e-12))
    offset = np.stack([c.logit_adjust * log_prior for c in configs])
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)
    return as_t(cw), as_t(offset)


def stacked_loss(logits: torch.Tensor, y: torch.Tensor, cw: torch.Tensor,
                 offset: torch.Tensor) -> torch.Tensor:
    """Sum over heads of each head's mean weighted (logit-adjusted) cross-entropy.

    Summing keeps heads independent: head k's gradient is that of its own loss.
    """
    k, b, c = logits.shape
    adjusted = logits + offset[:, None, :]
    ce = F.cross_entropy(adjusted.reshape(k * b, c), y.repeat(k), reduction="none").view(k, b)
    return (ce * cw[:, y]).mean(1).sum()


def predict_logits(model: nn.Module, chunks: Iterator[torch.Tensor]) -> torch.Tensor:
    """Concatenated logits (K, N, C) on CPU, in eval mode, chunk by chunk."""
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = [model(x.to(device, non_blocking=True)).float().cpu() for x in chunks]
    return torch.cat(out, dim=1) if out else torch.zeros(model.k, 0, model.dims[-1])


def fit_heads(source, n_classes: int, configs: Sequence[HeadConfig], spec: TrainSpec, *,
              device: torch.device, validate: Callable[..., list[tuple]] | None = None,
              progress: bool = False, desc: str = "train") -> list[FitResult]:
    """Train one head per config in ONE batched pass over ``source``; early-stop on ``validate``.

    ``validate(model, class_weights, logit_offsets)`` returns, per head, ``(metric, -val_loss)``
    where val_loss is the head's own training objective on val; each head keeps the weights of
    its lowest-val-loss check and stops after ``spec.patience`` checks without improvement
    (checks: every ``spec.val_every`` steps and at each epoch's end). (The
    loss is smooth where a metric on a small val set jumps from epoch to epoch; the metric then
    picks between heads.)
    """
    from tqdm.auto import tqdm

    mean, std = source.moments()
    torch.manual_seed(spec.seed)
    model = StackedHead(mean.shape[0], n_classes, hidden=spec.hidden, k=len(configs),
                        seed=spec.seed, dropout=[c.dropout for c in configs])
    model.set_standardization(mean, std)
    model.to(device)
    model.noise = torch.Generator(device=device).manual_seed(spec.seed)
    counts = class_counts(source.labels, source.repeat, n_classes)
    cw, offset = loss_terms(configs, counts, device)
    as_t = lambda vals: torch.tensor(vals, dtype=torch.float32, device=device)
    opt = _BatchedAdamW(model.parameters(), as_t([c.lr for c in configs]),
                        as_t([c.weight_decay for c in configs]))
    sample_w = None
    if spec.sampler == "balanced":
        sample_w = source.repeat / np.maximum(counts, 1)[source.labels]
    rng = np.random.default_rng(spec.seed)
    tracker = _EarlyStopping(len(configs), spec.patience)
    bar = tqdm(range(1, spec.epochs + 1), desc=desc, unit="epoch", disable=not progress)
    step = 0
    for epoch in bar:
        model.train()
        total, steps = torch.zeros((), device=device), 0
        for xb, yb in source.batches(rng, spec.batch_size, sample_w):
            loss = stacked_loss(model(xb), yb, cw, offset)
            loss.backward()
            opt.step()
            total += loss.detach()
            steps, step = steps + 1, step + 1
            # on large data, check val within the epoch too: patience then costs a fraction of
            # an epoch, not whole epochs after the best one
            if validate is not None and step % spec.val_every == 0:
                tracker.update(epoch, step, model, validate(model, cw, offset), None)
                model.train()
                if tracker.all_stopped():
                    break
        train_loss = float(total) / max(steps, 1) / len(configs)
        if not tracker.all_stopped() and (validate is None or step % spec.val_every):
            scores = validate(model, cw, offset) if validate is not None else [None] * len(configs)
            tracker.update(epoch, step, model, scores, train_loss)
        bar.set_postfix(loss=f"{train_loss:.4f}", best=tracker.best_text())
        if tracker.all_stopped():
            break
    bar.close()
    return tracker.results(model)


class _EarlyStopping:
    """Best check and weights per head; a head 'stops' after ``patience`` checks without gain."""

    def __init__(self, k: int, patience: int):
        self.k, self.patience = k, patience
        self.checks = 0
        self.best: list = [None] * k
        self.best_check = [0] * k
        self.best_epoch = [0] * k
        self.state: list = [None] * k
        self.history: list[list] = [[] for _ in range(k)]

    def update(self, epoch: int, step: int, model: StackedHead, scores: list,
               train_loss: float | None) -> None:
        for i, score in enumerate(scores):
            if self.stopped(i):
                continue   # keeps training in the batch, but its result is already fixed
            self.history[i].append({"epoch": epoch, "step": step, "train_loss": train_loss,
                                    "score": list(score) if score is not None else None})
            if score is None or self.best[i] is None or score[1] > self.best[i][1]:
                self.best[i], self.best_check[i], self.best_epoch[i] = score, self.checks, epoch
                self.state[i] = model.select(i).state_dict()
        self.checks += 1

    def stopped(self, i: int) -> bool:
        return self.best[i] is not None and self.checks - 1 - self.best_check[i] >= self.patience

    def all_stopped(self) -> bool:
        return all(self.stopped(i) for i in range(self.k))

    def best_text(self) -> str:
        vals = [b[0] for b in self.best if b is not None]
        return f"{max(vals):.4f}" if vals else "-"

    def results(self, model: StackedHead) -> list[FitResult]:
        out = []
        for i in range(self.k):
            one = model.select(i)
            one.load_state_dict(self.state[i])
            best = tuple(self.best[i]) if self.best[i] is not None else None
            out.append(FitResult(one, self.best_epoch[i], best, self.history[i]))
        return out


def validation_scorer(chunks_fn: Callable[[], Iterator[torch.Tensor]], y_val: np.ndarray,
                      metric: Callable[[np.ndarray, np.ndarray], float]):
    """A ``validate`` callback: per head (metric(y, logits), -training objective on val)."""
    y_t = torch.as_tensor(np.asarray(y_val, dtype=np.int64))

    def validate(model: StackedHead, cw: torch.Tensor, offset: torch.Tensor) -> list[tuple]:
        logits = predict_logits(model, chunks_fn())
        cw, offset = cw.cpu(), offset.cpu()
        out = []
        for k, lk in enumerate(logits):
            ce = F.cross_entropy(lk + offset[k], y_t, reduction="none")
            out.append((metric(y_val, lk.numpy()), -float((ce * cw[k, y_t]).mean())))
        return out
    return validate


__all__ = [
    "DEFAULT_LR",
    "ArraySource",
    "FitResult",
    "HeadConfig",
    "StackedHead",
    "TrainSpec",
    "build_head",
    "class_counts",
    "epoch_indices",
    "fit_heads",
    "head_spec",
    "loss_terms",
    "predict_logits",
    "stacked_loss",
    "validation_scorer",
]
