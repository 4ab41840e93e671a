"""LoRA (Hu et al., ICLR 2022) on the attention projections of ViT backbones, through peft.

OpenCLIP's vision blocks use ``nn.MultiheadAttention``, which keeps q, k and v fused in one
``in_proj_weight`` (3d x d) and reads it directly, with no Linear submodule for peft to wrap; an
adapter on the whole fused matrix would also move k. So each targeted block's attention is
swapped for :class:`SplitAttention`, the same computation with separate ``q_proj``, ``k_proj``,
``v_proj`` and ``out_proj`` Linear layers (weights copied), and peft puts its adapters on the
chosen projections only. timm ViTs fuse q, k, v in one Linear ``attn.qkv``; :class:`SplitQKV`
replaces it with three Linears whose outputs are concatenated in the same order.

:func:`merge_lora` folds the adapters into the weights (peft's own merge) and re-fuses the
projections, so inference runs a plain OpenCLIP / timm model again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LoraSettings", "SplitAttention", "SplitQKV", "apply_lora", "lora_settings", "merge_lora",
           "parse_blocks"]

TARGETS = ("q", "k", "v", "out")


@dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]
    blocks: tuple[int, ...]


def parse_blocks(spec: Any, num_blocks: int, key: str = "model.lora.blocks") -> tuple[int, ...]:
    """``null``/``all``, ``last:N`` or a list of 0-based block indices -> sorted unique indices."""
    def bad(msg: str) -> ValueError:
        return ValueError(f"{key}: {msg} (backbone has {num_blocks} blocks, 0..{num_blocks - 1})")

    if spec is None or spec == "all":
        return tuple(range(num_blocks))
    if isinstance(spec, str):
        head, _, n = spec.partition(":")
        if head != "last" or not n.isdigit() or not 1 <= int(n) <= num_blocks:
            raise bad(f"'{spec}' must be all, last:N with 1 <= N <= {num_blocks}, or a list of block indices")
        return tuple(range(num_blocks - int(n), num_blocks))
    try:
        items = list(spec)
    except TypeError:
        raise bad(f"{spec!r} must be all, last:N or a list of block indices") from None
    if not items:
        raise bad("the list of blocks is empty")
    for i in items:
        if isinstance(i, bool) or not isinstance(i, int):
            raise bad(f"{i!r} is not a block index")
        if not 0 <= i < num_blocks:
            raise bad(f"block {i} does not exist")
    return tuple(sorted(set(items)))


def lora_settings(lora_cfg: Any, num_blocks: int) -> LoraSettings:
    """Validate the ``model.lora`` section; every error names the key at fault."""
    rank, alpha, dropout = lora_cfg.rank, lora_cfg.alpha, lora_cfg.dropout
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"model.lora.rank: {rank!r} must be a positive integer")
    if not alpha > 0:
        raise ValueError(f"model.lora.alpha: {alpha!r} must be positive")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"model.lora.dropout: {dropout!r} must be in [0, 1)")
    targets = [str(t) for t in (lora_cfg.targets or [])]
    if not targets:
        raise ValueError(f"model.lora.targets: empty; choose from {', '.join(TARGETS)}")
    for t in targets:
        if t not in TARGETS:
            raise ValueError(f"model.lora.targets: '{t}' is not an attention projection; "
                             f"choose from {', '.join(TARGETS)}")
    return LoraSettings(rank, float(alpha), float(dropout), tuple(dict.fromkeys(targets)),
                        parse_blocks(lora_cfg.blocks, num_blocks))


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """nn.MultiheadAttention's masks: bool True = masked out; float = added to the logits."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


class SplitAttention(nn.Module):
    """``nn.MultiheadAttention`` with q, k, v and out as four Linear layers (for per-projection LoRA).

    Same call signature and result as the module it replaces (``need_weights=False``), including
    ``batch_first``, ``attn_mask`` (2-D or per-head 3-D, bool or additive) and ``key_padding_mask``.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("model.lora: this attention (separate k/v dims, bias_k or add_zero_attn) "
                             "is not supported")
        d, bias = mha.embed_dim, mha.in_proj_bias is not None
        w = mha.in_proj_weight.detach()
        kw = dict(device=w.device, dtype=w.dtype)
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, d, bias=bias, **kw) for _ in range(3))
        self.out_proj = nn.Linear(d, d, bias=mha.out_proj.bias is not None, **kw)
        with torch.no_grad():
            for i, lin in enumerate((self.q_proj, self.k_proj, self.v_proj)):
                lin.weight.copy_(w[i * d:(i + 1) * d])
                if bias:
                    lin.bias.copy_(mha.in_proj_bias[i * d:(i + 1) * d])
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)
        self.embed_dim, self.num_heads = d, mha.num_heads
        self.dropout, self.batch_first = mha.dropout, mha.batch_first

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise NotImplementedError("SplitAttention (LoRA) computes no attention weights; "
                                      "call it with need_weights=False")
        if query.dim() != 3:
            raise ValueError(f"SplitAttention expects batched 3-D input, got shape {tuple(query.shape)}")
        if not self.batch_first:  # (L, B, E) -> (B, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, n_q, _ = query.shape
        n_k, h = key.shape[1], self.num_heads
        q = self.q_proj(query).view(b, n_q, h, -1).transpose(1, 2)
        k = self.k_proj(key).view(b, n_k, h, -1).transpose(1, 2)
        v = self.v_proj(value).view(b, n_k, h, -1).transpose(1, 2)
        mask = None
        if attn_mask is not None:
            mask = _additive(attn_mask, q.dtype)
            mask = mask.view(b, h, n_q, n_k) if mask.dim() == 3 else mask
        if key_padding_mask is not None:
            pad = _additive(key_padding_mask, q.dtype).view(b, 1, 1, n_k)
            mask = pad if mask is None else mask + pad
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0,
                                             is_causal=is_causal and mask is None)
        out = self.out_proj(out.transpose(1, 2).reshape(b, n_q, self.embed_dim))
        return (out if self.batch_first else out.transpose(0, 1)), None

    def to_multihead(self) -> nn.MultiheadAttention:
        """Re-fuse into ``nn.MultiheadAttention`` (built on the meta device: no RNG is consumed)."""
        w = self.q_proj.weight
        bias = self.q_proj.bias is not None
        mha = nn.MultiheadAttention(self.embed_dim, self.num_heads, dropout=self.dropout, bias=bias,
                                    batch_first=self.batch_first, device="meta")
        mha = mha.to_empty(device=w.device).to(w.dtype)
        with torch.no_grad():
            mha.in_proj_weight.copy_(torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]))
            if bias:
                mha.in_proj_bias.copy_(torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]))
            mha.out_proj.weight.copy_(self.out_proj.weight)
            if self.out_proj.bias is not None:
                mha.out_proj.bias.copy_(self.out_proj.bias)
        return mha


class SplitQKV(nn.Module):
    """A fused ``qkv`` Linear (d -> 3d, timm ViTs) as three Linears ``q``, ``k``, ``v``, outputs concatenated."""

    def __init__(self, qkv: nn.Linear) -> None:
        super().__init__()
        d_in, d = qkv.in_features, qkv.out_features // 3
        bias = qkv.bias is not None
        kw = dict(device=qkv.weight.device, dtype=qkv.weight.dtype)
        self.q, self.k, self.v = (nn.Linear(d_in, d, bias=bias, **kw) for _ in range(3))
        with torch.no_grad():
            for i, lin in enumerate((self.q, self.k, self.v)):
                lin.weight.copy_(qkv.weight[i * d:(i + 1) * d])
                if bias:
                    lin.bias.copy_(qkv.bias[i * d:(i + 1) * d])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)

    def to_linear(self) -> nn.Linear:
        w = self.q.weight
        lin = nn.Linear(w.shape[1], 3 * w.shape[0], bias=self.q.bias is not None, device="meta")
        lin = lin.to_empty(device=w.device).to(w.dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.cat([self.q.weight, self.k.weight, self.v.weight]))
            if lin.bias is not None:
                lin.bias.copy_(torch.cat([self.q.bias, self.k.bias, self.v.bias]))
        return lin


def _vit_blocks(backbone: nn.Module) -> tuple[nn.Module, str, list[nn.Module], str]:
    """(root module for peft, prefix of the block list in it, the blocks, kind)."""
    visual = getattr(backbone, "visual", None)
    if visual is not None and hasattr(visual, "transformer"):
        return visual, "transformer.resblocks", list(visual.transformer.resblocks), "open_clip"
    model = getattr(backbone, "model", None)
    if model is not None and hasattr(model, "blocks"):
        from timm.layers import Attention

        blocks = list(model.blocks)
        if blocks and all(isinstance(getattr(b, "attn", None), Attention)
                          and isinstance(b.attn.qkv, nn.Linear) for b in blocks):
            return model, "blocks", blocks, "timm"
    raise ValueError("model.lora: LoRA needs an OpenCLIP ViT (open_clip:NAME) or a timm ViT whose blocks use "
                     "a fused attn.qkv Linear; this backbone has neither (set model.lora.enabled=false)")


def apply_lora(backbone: nn.Module, lora_cfg: Any) -> LoraSettings:
    """Put LoRA adapters on the chosen projections of the chosen blocks; freeze the rest of the backbone."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as exc:
        raise ValueError("model.lora.enabled=true needs peft: pip install -e '.[lora]'") from exc

    root, prefix, blocks, kind = _vit_blocks(backbone)
    s = lora_settings(lora_cfg, len(blocks))
    names = []
    for i in s.blocks:
        attn = blocks[i].attn
        if kind == "open_clip":
            if not isinstance(attn, nn.MultiheadAttention):
                raise ValueError(f"model.lora: block {i} uses {type(attn).__name__}, not nn.MultiheadAttention")
            blocks[i].attn = SplitAttention(attn)
            leaf = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "out": "out_proj"}
        else:
            attn.qkv = SplitQKV(attn.qkv)
            leaf = {"q": "qkv.q", "k": "qkv.k", "v": "qkv.v", "out": "proj"}
        names += [f"{prefix}.{i}.attn.{leaf[t]}" for t in s.targets]
    config = LoraConfig(r=s.rank, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=names, bias="none")
    inject_adapter_in_model(config, root)
    for name, p in backbone.named_parameters():
        p.requires_grad_("lora_" in name)
    return s


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base weight and re-fuse split projections, in place."""
    from peft.tuners.lora import LoraLayer

    def replace(parent_name: str, new: nn.Module) -> None:
        parent_path, _, child = parent_name.rpartition(".")
        setattr(module.get_submodule(parent_path), child, new)

    for name, m in list(module.named_modules()):
        if isinstance(m, LoraLayer):
            m.merge(safe_merge=True)
            replace(name, m.get_base_layer())
    for name, m in list(module.named_modules()):
        if isinstance(m, SplitAttention):
            replace(name, m.to_multihead())
        elif isinstance(m, SplitQKV):
            replace(name, m.to_linear())
    return module
