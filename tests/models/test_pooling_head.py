import torch

from simsearch.models import EmbeddingHead, GeM


def test_gem_p1_is_average_pooling_on_maps_and_tokens():
    x = torch.rand(2, 5, 4, 3) + 0.1
    assert torch.allclose(GeM(p=1.0)(x), x.mean(dim=(2, 3)), atol=1e-6)
    t = torch.rand(2, 7, 5) + 0.1
    assert torch.allclose(GeM(p=1.0)(t), t.mean(dim=1), atol=1e-6)


def test_gem_p3_matches_formula_and_p_is_learnable():
    x = torch.rand(2, 3, 4, 4) + 0.1
    expected = x.pow(3).mean(dim=(2, 3)).pow(1 / 3)
    gem = GeM(p=3.0)
    assert torch.allclose(gem(x), expected, atol=1e-5)
    gem(x).sum().backward()
    assert gem.p.grad is not None and gem.p.requires_grad
    assert not GeM(p=3.0, learnable=False).p.requires_grad


def test_gem_large_p_approaches_max():
    x = torch.rand(1, 2, 3, 3) + 0.1
    assert torch.allclose(GeM(p=200.0)(x), x.amax(dim=(2, 3)), rtol=2e-2)


def test_head_output_has_unit_norm_in_train_and_eval():
    # Realistic width: with 6 dims dropout 0.5 can zero a whole row (p = 1/64), never at 128.
    head = EmbeddingHead(10, 128, dropout=0.5)
    x = torch.randn(8, 10)
    for mode in (True, False):
        head.train(mode)
        out = head(x)
        assert out.shape == (8, 128)
        assert torch.allclose(out.norm(dim=1), torch.ones(8), atol=1e-5)
    layers = [type(m).__name__ for m in head.children()]
    assert layers == ["Linear", "BatchNorm1d", "Dropout"]
