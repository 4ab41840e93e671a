"""The learned-linear-maps benchmark: each map against a hand-computed oracle, and the whole run."""
from __future__ import annotations

import numpy as np
import pytest

from simsearch.benchmarks.whitening import fit_map, main, map_names, validate_map
from simsearch.data.demo import build_demo_competition


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture()
def skewed() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(400, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1]) + 2.0


def test_center_and_std_are_the_textbook_maps(skewed) -> None:
    z = skewed[:5]
    mu, sd = skewed.mean(0), skewed.std(0)
    np.testing.assert_allclose(fit_map("center", skewed)(z), _l2(z - mu), atol=1e-6)
    np.testing.assert_allclose(fit_map("std", skewed)(z), _l2((z - mu) / sd), atol=1e-5)
    np.testing.assert_allclose(fit_map("raw", skewed)(z), _l2(z), atol=1e-6)


def test_full_pca_whitening_gives_the_gram_matrix_of_zca_whitening(skewed) -> None:
    """PCA and ZCA whitening differ by a rotation, so their normalised inner products agree."""
    z = skewed[:20]
    mu = skewed.mean(0)
    vals, vecs = np.linalg.eigh(np.cov((skewed - mu).T))
    zca = _l2((z - mu) @ vecs @ np.diag(vals ** -0.5) @ vecs.T)
    w = fit_map("pca b1.0 d0 s0.0", skewed)(z)
    np.testing.assert_allclose(w @ w.T, zca @ zca.T, atol=1e-5)
    # beta 0 with every dimension kept is centring alone (a rotation changes no inner product)
    c = fit_map("center", skewed)(z)
    p0 = fit_map("pca b0.0 d2 s0.0", skewed)(z)
    assert p0.shape == (20, 2) and not np.allclose(p0 @ p0.T, c @ c.T, atol=1e-3)  # the cut to 2 dims matters
    p0_full = fit_map("pca b0.0 d0 s0.0", skewed)(z)
    np.testing.assert_allclose(p0_full @ p0_full.T, c @ c.T, atol=1e-5)


def test_unknown_map_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown map 'lda'"):
        fit_map("lda", np.ones((3, 2)))
    assert "raw" in map_names() and "pca b0.5 d0 s1.0" in map_names()


@pytest.mark.parametrize("kind", ["diag", "lowrank8", "full"])
def test_a_supervised_map_starts_at_the_identity(kind: str, skewed) -> None:
    labels = np.arange(len(skewed)) % 4
    np.testing.assert_allclose(fit_map(f"nca {kind} s0", skewed, labels)(skewed[:7]), _l2(skewed[:7]), atol=1e-6)


def test_the_diagonal_map_learns_which_dimension_carries_the_class() -> None:
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(8), 20)
    x = rng.normal(size=(160, 4)) * np.array([0.3, 2.0, 2.0, 2.0])  # dims 1-3: loud noise
    x[:, 0] += 2.0 * np.linspace(-1, 1, 8)[labels]  # dim 0: the class, quietly
    f = fit_map("nca diag s100", x, labels)
    both = f(np.array([[1.0, 1.0, 0.0, 0.0]]))[0]  # equal inputs on dimensions 0 and 1 (1:1 at the start)
    assert both[0] > 1.5 * both[1] > 0  # dimension 0 now outweighs dimension 1
    trained, raw = validate_map("nca diag s100", x, labels, folds=3), validate_map("raw", x, labels, folds=3)
    assert trained["map"] > raw["map"]
    with pytest.raises(ValueError, match="needs the training labels"):
        fit_map("nca diag s10", x)
    with pytest.raises(ValueError, match="unknown supervised map kind 'huge'"):
        fit_map("nca huge s10", x, labels)


def test_class_split_validation_scores_separable_and_random_classes() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 4)
    centres = np.eye(10, 16) * 10
    separable = centres[labels] + rng.normal(scale=0.01, size=(40, 16))
    assert validate_map("raw", separable, labels, folds=3) == {"r1": 1.0, "map": 1.0}
    noise = rng.normal(size=(40, 16))
    assert validate_map("raw", noise, labels, folds=3)["map"] < 0.8


def test_the_whole_benchmark_on_a_small_competition(tmp_path, capsys) -> None:
    comp = build_demo_competition(tmp_path / "comp", seed=1, views_per_item=3, crop_grid=1)["out_dir"]
    assert main(["--data", str(comp), "--config", "tiny_test", "--folds", "2", "--json", str(tmp_path / "w.json"),
                 "data.num_workers=0", "data.image_size=32", "infer.batch_size=16"]) == 0
    out = capsys.readouterr().out
    assert "(chosen)" in out and "| raw |" in out.replace(" (chosen)", "")
    import json

    rows = json.loads((tmp_path / "w.json").read_text())
    assert [r["map"] for r in rows] == map_names()
    chosen = max(rows, key=lambda r: r["val"]["map"])
    assert f"| {chosen['map']} (chosen) |" in out
