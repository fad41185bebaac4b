"""Classifier heads on cached features as scikit-learn estimators: ``LinearHead``, ``MLPHead``.

A *head* is a linear layer or a small MLP on standardised features, trained by the batched trainer
of ``vidfeat.training.stacked`` (one head here). They are real scikit-learn classifiers
(``BaseEstimator`` + ``ClassifierMixin``): ``clone``, ``Pipeline``, ``GridSearchCV`` and
``cross_val_score`` work, and ``check_estimator`` passes. They train from numpy arrays, torch
tensors, or a ``FeatureStore`` (train split; val split for early stopping).

The trainer's names (``StackedHead``, ``build_head``, ``head_spec``, ``predict_logits``…) are
re-exported here for the modules that import them from this one.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from vidfeat.system import resolve_device
from vidfeat.training.stacked import (
    DEFAULT_LR,
    SAMPLERS,
    ArraySource,
    FitResult,
    HeadConfig,
    StackedHead,
    TrainSpec,
    build_head,
    class_counts,
    epoch_indices,
    fit_heads,
    head_spec,
    loss_terms,
    predict_logits,
    stacked_loss,
    validation_scorer,
)

try:   # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn keeps it as a method
    def _validate_data(estimator, *args, **kwargs):
        return estimator._validate_data(*args, **kwargs)


def _numpy(a):
    """Torch tensors to numpy; anything else unchanged (``validate_data`` converts it)."""
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a


class _Head(ClassifierMixin, BaseEstimator):
    """scikit-learn estimator over ``fit_heads`` (one head); subclasses define ``__init__``."""

    _hidden: tuple = ()

    def _config(self) -> HeadConfig:
        return HeadConfig(lr=self.lr, weight_decay=self.weight_decay,
                          class_weight=self.class_weight, logit_adjust=self.logit_adjust or 0.0,
                          dropout=getattr(self, "dropout", 0.0))

    def _spec(self) -> TrainSpec:
        return TrainSpec(hidden=tuple(self._hidden), epochs=self.epochs,
                         batch_size=self.batch_size, seed=self.seed, sampler=self.sampler,
                         patience=self.patience)

    def fit(self, X, y=None, *, X_val=None, y_val=None, repeat=None) -> _Head:
        """Fit on (X, y), or on a FeatureStore's train split (early stopping on its val split).

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n_samples, n_features), or a ``FeatureStore``
            Training features; a FeatureStore (anything with ``.load``) supplies its train split
            as training data and its val split as validation data, and ``y`` must be None.
        y : array-like of shape (n_samples,)
            Class labels (any sortable labels; ``classes_`` holds them sorted).
        X_val, y_val : array-like, optional
            Validation data: the epoch with the lowest validation loss is kept, and training
            stops after ``patience`` checks without improvement.
        repeat : array-like of int, optional
            How many times each training row counts per epoch (oversampling).

        Returns
        -------
        self
        """
        from vidfeat.training.metrics import classification_metrics

        X, y, X_val, y_val, repeat = self._inputs(X, y, X_val, y_val, repeat)
        device = resolve_device(self.device)
        source = ArraySource(X, y, repeat, device=device)
        validate = None
        if X_val is not None:
            names = [str(i) for i in range(len(self.classes_))]
            val = ArraySource(X_val, y_val, device=device)
            ba = lambda t, z: classification_metrics(t, z.argmax(1), names)["balanced_accuracy"]
            validate = validation_scorer(val.chunks, val.labels, ba)
        result = fit_heads(source, len(self.classes_), [self._config()], self._spec(),
                           device=device, validate=validate, progress=self.progress)[0]
        self.model_, self.best_epoch_, self.history_ = result.model, result.best_epoch, result.history
        return self

    def _inputs(self, X, y, X_val, y_val, repeat):
        if y is None and hasattr(X, "load"):    # a FeatureStore
            train, val = X.load("train"), X.load("val")
            self.class_names_ = list(X.class_names)
            self.classes_ = np.arange(len(self.class_names_))
            self.n_features_in_ = int(train.X.shape[1])
            vx, vy = (val.X, val.y) if len(val.y) else (None, None)
            return train.X, train.y, vx, vy, train.repeat
        # y=None reaches validate_data, whose error says that y is required
        X, y = _validate_data(self, _numpy(X), _numpy(y), dtype=np.float32)
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            n = len(self.classes_)
            raise ValueError(f"need at least 2 classes to train a classifier, got {n} "
                             f"class{'' if n == 1 else 'es'}")
        if X_val is not None:
            X_val = _validate_data(self, _numpy(X_val), dtype=np.float32, reset=False)
            y_val = self._codes(_numpy(y_val))
        # read-only inputs (memory maps) would make torch warn on every conversion
        X = X if X.flags.writeable else X.copy()
        return X, codes, X_val, y_val, repeat

    def _codes(self, labels) -> np.ndarray:
        labels = np.asarray(labels)
        codes = np.searchsorted(self.classes_, labels)
        known = (codes < len(self.classes_)) & (self.classes_[np.minimum(codes, len(self.classes_) - 1)]
                                                 == labels)
        if not known.all():
            raise ValueError(f"y_val holds labels absent from y: {sorted(set(labels[~known]))}")
        return codes

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = _validate_data(self, _numpy(X), dtype=np.float32, reset=False)
        X = torch.from_numpy(np.array(X, dtype=np.float32, copy=True))
        return predict_logits(self.model_, iter(X.split(65536)))[0].numpy()

    def decision_function(self, X) -> np.ndarray:
        """Logits, shape (n_samples, n_classes); for two classes, the margin (n_samples,).

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n_samples, n_features_in_)

        The binary margin (logit of ``classes_[1]`` minus that of ``classes_[0]``) follows
        scikit-learn's convention, which ``roc_auc_score`` and scorers rely on.
        """
        logits = self._logits(X)
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (softmax of the logits), shape (n_samples, n_classes).

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n_samples, n_features_in_)
        """
        return torch.softmax(torch.from_numpy(self._logits(X)).double(), 1).numpy()

    def predict(self, X) -> np.ndarray:
        """Predicted labels (from ``classes_``).

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n_samples, n_features_in_)
        """
        logits = self._logits(X)   # first: unfitted, it raises NotFittedError, not AttributeError
        return self.classes_[logits.argmax(1)]

    def score(self, X, y, sample_weight=None) -> float:
        """Mean accuracy on (X, y).

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n_samples, n_features_in_)
        y : array-like or torch.Tensor of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), optional
        """
        return float(super().score(X, _numpy(y), sample_weight))


class LinearHead(_Head):
    """Multinomial logistic regression on standardised features, trained with AdamW.

    Parameters
    ----------
    lr : float
        AdamW learning rate.
    weight_decay : float
        AdamW weight decay on the weights (not the bias).
    epochs : int
        Maximum passes over the training rows.
    batch_size : int
        Rows per minibatch.
    class_weight : str
        'none', 'balanced' or 'effective:BETA' (loss weights; ``vidfeat.class_weights``).
    sampler : str or None
        None/'none', or 'balanced' to draw minibatch rows class-balanced.
    logit_adjust : float or None
        tau of logit-adjusted loss (Menon et al.); None or 0 turns it off.
    patience : int
        Validation checks without improvement before stopping (with validation data).
    seed : int
        Seeds initial weights, shuffling and dropout.
    device : str
        'auto', 'cpu', 'cuda' or 'cuda:N'.
    progress : bool
        Show a progress bar.
    """

    def __init__(self, *, lr: float = DEFAULT_LR["linear"], weight_decay: float = 1e-4,
                 epochs: int = 50, batch_size: int = 256, class_weight: str = "none",
                 sampler: str | None = None, logit_adjust: float | None = None, patience: int = 5,
                 seed: int = 0, device: str = "auto", progress: bool = False):
        self.lr, self.weight_decay, self.epochs, self.batch_size = lr, weight_decay, epochs, batch_size
        self.class_weight, self.sampler, self.logit_adjust = class_weight, sampler, logit_adjust
        self.patience, self.seed, self.device, self.progress = patience, seed, device, progress


class MLPHead(_Head):
    """A ReLU MLP on standardised features, trained with AdamW.

    Parameters
    ----------
    hidden : sequence of int
        Hidden layer sizes.
    dropout : float
        Dropout after each hidden layer, in [0, 1).
    lr, weight_decay, epochs, batch_size, class_weight, sampler, logit_adjust, patience, seed, \
device, progress
        As for ``LinearHead``.
    """

    def __init__(self, *, hidden: Sequence[int] = (512,), dropout: float = 0.2,
                 lr: float = DEFAULT_LR["mlp"], weight_decay: float = 1e-4, epochs: int = 50,
                 batch_size: int = 256, class_weight: str = "none", sampler: str | None = None,
                 logit_adjust: float | None = None, patience: int = 5, seed: int = 0,
                 device: str = "auto", progress: bool = False):
        self.hidden, self.dropout = hidden, dropout
        self.lr, self.weight_decay, self.epochs, self.batch_size = lr, weight_decay, epochs, batch_size
        self.class_weight, self.sampler, self.logit_adjust = class_weight, sampler, logit_adjust
        self.patience, self.seed, self.device, self.progress = patience, seed, device, progress

    @property
    def _hidden(self) -> tuple:
        return tuple(self.hidden)


def expected_failed_checks(estimator) -> dict[str, str]:
    """The ``check_estimator`` checks a head is known to fail, with the reason (scikit-learn 1.6+).

    Parameters
    ----------
    estimator : LinearHead or MLPHead
        Pass as ``check_estimator(est, expected_failed_checks=expected_failed_checks(est))``.
    """
    return {"check_class_weight_classifiers":
            f"{type(estimator).__name__}.class_weight is 'none', 'balanced' or 'effective:BETA' "
            "(shared with vidfeat train and its report), not a per-class dict"}


# the trainer's names are re-exported for the modules that import them from here
__all__ = [
    "DEFAULT_LR", "SAMPLERS", "ArraySource", "FitResult", "HeadConfig", "LinearHead", "MLPHead",
    "StackedHead", "TrainSpec", "build_head", "class_counts", "epoch_indices",
    "expected_failed_checks", "fit_heads", "head_spec", "loss_terms", "predict_logits",
    "stacked_loss", "validation_scorer",
]
