"""Class weights: the formulas shared by training's loss and the report (``vidfeat.class_weights``)."""
import numpy as np
import pytest

from vidfeat.class_weights import class_weights, parse_class_weight


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


def test_balanced_equals_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.repeat([0, 1, 2], [80, 15, 5])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    np.testing.assert_allclose(class_weights("balanced", np.bincount(y)), expected)


@pytest.mark.parametrize("spec, parsed", [("none", None), ("balanced", "balanced"),
                                          ("effective:0.9", 0.9), ("effective:0", 0.0)])
def test_parse_class_weight(spec, parsed):
    assert parse_class_weight(spec) == parsed


@pytest.mark.parametrize("spec, match", [
    ("bogus", "class_weight='bogus' is not one of"),
    ("effective:1.5", r"BETA must be in \[0, 1\)"),
    ("effective:x", "BETA must be a number"),
])
def test_parse_class_weight_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_class_weight(spec)
