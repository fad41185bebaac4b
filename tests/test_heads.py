"""Heads: scikit-learn contract, accuracy vs LogisticRegression, batched sweeps, imbalance options."""
import numpy as np
import pytest
import torch

from vidfeat.heads import (ArraySource, HeadConfig, LinearHead, MLPHead, StackedHead, TrainSpec,
                           build_head, class_weights, epoch_indices, fit_heads, head_spec,
                           validation_scorer)
from vidfeat.metrics import classification_metrics

PRIORS = np.array([0.55, 0.25, 0.12, 0.05, 0.03])


def clusters(n, *, seed, dim=24, sep=0.45, priors=PRIORS):
    """Imbalanced Gaussian class clusters (fixed centres, fresh samples per seed)."""
    centres = np.random.default_rng(123).normal(size=(len(priors), dim)) * sep
    rng = np.random.default_rng(seed)
    y = rng.choice(len(priors), size=n, p=priors / priors.sum())
    return (centres[y] + rng.normal(size=(n, dim))).astype(np.float32), y


@pytest.fixture(scope="module")
def data():
    return clusters(3000, seed=1), clusters(1000, seed=2), clusters(3000, seed=3)


def minority_recall(head, X, y, cls=4):
    names = [str(i) for i in range(len(PRIORS))]
    return classification_metrics(y, head.predict(X), names)["per_class"][names[cls]]["recall"]


def test_linear_head_matches_logistic_regression(data):
    from sklearn.linear_model import LogisticRegression

    (X, y), (Xv, yv), (Xt, yt) = data
    ours = LinearHead(device="cpu", lr=1e-2).fit(X, y, X_val=Xv, y_val=yv)
    ref = LogisticRegression(max_iter=1000).fit(X, y)
    assert ours.score(Xt, yt) >= ref.score(Xt, yt) - 0.02
    assert ours.score(Xt, yt) > 0.7   # the clusters are learnable, so this is not chance


def test_sklearn_contract(data):
    (X, y), _, (Xt, yt) = data
    labels = np.array(["cat", "dog", "eel", "fox", "gnu"])[y]
    head = LinearHead(device="cpu", epochs=5)
    assert not hasattr(head, "classes_")
    with pytest.raises(RuntimeError, match="not fitted"):
        head.predict(Xt)
    assert head.fit(X, labels) is head
    assert list(head.classes_) == ["cat", "dog", "eel", "fox", "gnu"]
    assert head.n_features_in_ == X.shape[1]
    proba = head.predict_proba(Xt)
    assert proba.shape == (len(Xt), 5) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert set(head.predict(Xt)) <= set(head.classes_)
    assert head.score(Xt, np.array(["cat", "dog", "eel", "fox", "gnu"])[yt]) > 0.5
    assert head.get_params()["epochs"] == 5
    assert head.set_params(epochs=7).epochs == 7
    with pytest.raises(ValueError, match="invalid parameter 'bogus'"):
        head.set_params(bogus=1)
    with pytest.raises(ValueError, match=r"expects \(n, 24\)"):
        head.predict(Xt[:, :10])


def test_torch_tensors_same_as_numpy(data):
    (X, y), (Xv, yv), (Xt, _) = data
    a = LinearHead(device="cpu", epochs=4).fit(X, y, X_val=Xv, y_val=yv)
    b = LinearHead(device="cpu", epochs=4).fit(torch.from_numpy(X), torch.from_numpy(y),
                                               X_val=torch.from_numpy(Xv), y_val=yv)
    np.testing.assert_allclose(a.decision_function(Xt), b.decision_function(torch.from_numpy(Xt)),
                               atol=1e-5)


def test_same_seed_same_model_other_seed_differs(data):
    (X, y), _, (Xt, _) = data
    runs = [MLPHead(device="cpu", hidden=(32,), epochs=3, seed=s).fit(X, y) for s in (0, 0, 1)]
    logits = [r.decision_function(Xt) for r in runs]
    np.testing.assert_array_equal(logits[0], logits[1])
    assert not np.allclose(logits[0], logits[2])


def test_mlp_head_learns(data):
    (X, y), (Xv, yv), (Xt, yt) = data
    head = MLPHead(device="cpu", hidden=(64,), dropout=0.1, lr=3e-3).fit(X, y, X_val=Xv, y_val=yv)
    assert head.score(Xt, yt) > 0.7
    assert 1 <= head.best_epoch_ <= len(head.history_)


def test_one_class_is_an_error():
    with pytest.raises(ValueError, match="at least 2 classes"):
        LinearHead(device="cpu").fit(np.zeros((5, 3)), np.zeros(5))


@pytest.mark.parametrize("kwargs, match", [
    ({"class_weight": "bogus"}, "class_weight='bogus' is not one of"),
    ({"class_weight": "effective:1.5"}, r"BETA must be in \[0, 1\)"),
    ({"class_weight": "effective:x"}, "BETA must be a number"),
    ({"sampler": "random"}, "sampler='random' is not one of"),
    ({"lr": 0}, "lr must be > 0"),
    ({"device": "tpu"}, "device='tpu' is not one of"),
])
def test_bad_options(kwargs, match, data):
    (X, y), _, _ = data
    with pytest.raises(ValueError, match=match):
        LinearHead(**{"device": "cpu", **kwargs}).fit(X, y)


def test_class_weights_formulas():
    counts = np.array([80.0, 15.0, 5.0])
    bal = class_weights("balanced", counts)
    np.testing.assert_allclose(bal, 100 / (3 * counts))
    eff = class_weights("effective:0.99", counts)
    raw = (1 - 0.99) / (1 - 0.99 ** counts)
    np.testing.assert_allclose(eff / eff[0], raw / raw[0])
    assert (eff * counts).sum() == pytest.approx(counts.sum())   # weighted count preserved
    np.testing.assert_allclose(class_weights("none", counts), 1.0)
    assert class_weights("balanced", np.array([10.0, 0.0]))[1] == 0


def test_epoch_indices_honour_repeat():
    rng = np.random.default_rng(0)
    idx = epoch_indices(rng, np.array([1, 3, 0, 2]))
    assert sorted(idx.tolist()) == [0, 1, 1, 1, 3, 3]
    drawn = epoch_indices(rng, np.ones(1000, np.int64), np.r_[np.ones(500), np.full(500, 9.0)])
    assert len(drawn) == 1000 and (drawn >= 500).mean() > 0.8


@pytest.mark.parametrize("option", [{"class_weight": "balanced"}, {"class_weight": "effective:0.999"},
                                    {"sampler": "balanced"}, {"logit_adjust": 1.0}])
def test_imbalance_options_raise_minority_recall(option, data):
    (X, y), (Xv, yv), (Xt, yt) = data
    base = LinearHead(device="cpu", epochs=15, patience=15).fit(X, y)
    fixed = LinearHead(device="cpu", epochs=15, patience=15, **option).fit(X, y)
    assert minority_recall(fixed, Xt, yt) > minority_recall(base, Xt, yt) + 0.05


def test_sweep_equals_separate_fits(data):
    (X, y), (Xv, yv), _ = data
    src = ArraySource(X, y)
    val = ArraySource(Xv, yv)
    configs = [HeadConfig(lr=1e-3, weight_decay=0.0), HeadConfig(lr=1e-2, weight_decay=1e-3),
               HeadConfig(lr=3e-3, class_weight="balanced", logit_adjust=0.5, dropout=0.3)]
    spec = TrainSpec(hidden=(16,), epochs=6, batch_size=128, seed=3, patience=2)

    validate = validation_scorer(val.chunks, yv, lambda t, z: (z.argmax(1) == t).mean())

    together = fit_heads(src, 5, configs, spec, device=torch.device("cpu"), validate=validate)
    for cfg, joint in zip(configs, together):
        alone = fit_heads(src, 5, [cfg], spec, device=torch.device("cpu"), validate=validate)[0]
        assert alone.best_epoch == joint.best_epoch
        for key, value in alone.model.state_dict().items():
            torch.testing.assert_close(joint.model.state_dict()[key], value, atol=2e-5, rtol=1e-4)
    assert not torch.equal(together[0].model.weights[0], together[1].model.weights[0])


def test_head_spec_round_trip(tmp_path, data):
    (X, y), _, (Xt, _) = data
    head = MLPHead(device="cpu", hidden=(8, 4), epochs=2).fit(X, y)
    torch.save(head.model_.state_dict(), tmp_path / "h.pt")
    state = torch.load(tmp_path / "h.pt", weights_only=True)
    again = build_head(head_spec(head.model_), state)
    assert isinstance(again, StackedHead) and again.dims == [24, 8, 4, 5]
    again.eval()
    with torch.no_grad():
        np.testing.assert_allclose(again(torch.from_numpy(Xt))[0].numpy(),
                                   head.decision_function(Xt), atol=1e-6)
