import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simsearch.retrieval.embed import embed_batch
from simsearch.retrieval.pipeline import RetrievalOptions, retrieve
from simsearch.retrieval.rerank import k_reciprocal_rerank
from simsearch.utils.synthetic import clustered_unit_vectors


def _clustered(n: int, d: int = 16, centres: int = 6, seed: int = 0, noise: float = 0.4) -> np.ndarray:
    return clustered_unit_vectors(0, n, d, centres, noise, seed)[1]


def test_plain_retrieval_is_exact_cosine_top_k():
    q, g = _clustered(20, seed=1), _clustered(50, seed=2)
    ids, scores = retrieve(q, g, RetrievalOptions(rerank=False, top_k=7))
    sims = q @ g.T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :7]
    assert np.array_equal(np.sort(sims[np.arange(20)[:, None], ids], axis=1),
                          np.sort(sims[np.arange(20)[:, None], expected], axis=1))
    assert np.allclose(scores, np.take_along_axis(sims, ids, 1), atol=1e-5)


def test_top_k_zero_ranks_the_whole_gallery():
    q, g = _clustered(5, seed=1), _clustered(30, seed=2)
    ids, _ = retrieve(q, g, RetrievalOptions(rerank=False, top_k=0))
    assert ids.shape == (5, 30) and all(sorted(r) == list(range(30)) for r in ids)


def test_rerank_head_then_index_order_tail():
    q, g = _clustered(10, seed=3), _clustered(60, seed=4)
    opts = RetrievalOptions(rerank=True, top_k=40, rerank_candidates=15, k1=5, k2=3)
    ids, scores = retrieve(q, g, opts)
    rr_ids, _ = k_reciprocal_rerank(q, g, 5, 3, 0.3, num_candidates=15)
    plain, _ = retrieve(q, g, RetrievalOptions(rerank=False, top_k=40))
    assert np.array_equal(ids[:, :15], rr_ids)
    for i in range(10):
        tail = [j for j in plain[i] if j not in set(rr_ids[i])][:25]
        assert list(ids[i, 15:]) == tail
        assert len(set(ids[i])) == 40
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # scores never increase along a row


def test_rerank_changes_the_order_somewhere():
    q, g = _clustered(30, seed=5, noise=1.2), _clustered(80, seed=6, noise=1.2)
    a, _ = retrieve(q, g, RetrievalOptions(rerank=False, top_k=10))
    b, _ = retrieve(q, g, RetrievalOptions(rerank=True, top_k=10, k1=6, k2=3))
    assert not np.array_equal(a, b)


def test_options_from_config_and_bad_qe():
    from simsearch.config import load

    cfg = load([], ["infer.qe=alpha", "infer.top_k=5"])
    opts = RetrievalOptions.from_config(cfg.infer)
    assert opts.qe == "alpha" and opts.top_k == 5 and opts.k1 == 20
    with pytest.raises(ValueError, match="infer.qe"):
        RetrievalOptions.from_config(load([], ["infer.qe=magic"]).infer)


def test_flip_tta_is_the_renormalised_mean_of_both_views():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    model = lambda x: F.normalize(net(x), dim=1)  # noqa: E731
    x = torch.randn(2, 3, 4, 4)
    expected = F.normalize(model(x) + model(torch.flip(x, dims=[3])), dim=1)
    assert torch.allclose(embed_batch(model, x, tta_flip=True), expected, atol=1e-6)
    assert torch.allclose(embed_batch(model, x, tta_flip=False), model(x), atol=1e-6)
    # multi-scale: the mean over the scales' embeddings, renormalised
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    m2 = lambda x: F.normalize(conv(x), dim=1)  # noqa: E731
    big = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    assert torch.allclose(embed_batch(m2, x, scales=(1.0, 2.0)),
                          F.normalize(m2(x) + m2(big), dim=1), atol=1e-6)
