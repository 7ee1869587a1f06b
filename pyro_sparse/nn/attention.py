"""Attention with one unit latent per head (issue 28): the multi-head attention of ``nn.MultiheadAttention`` written
out so that each head's output can be multiplied by its latent, and the module a compact network holds in place of
an ``nn.MultiheadAttention`` whose pruned heads are gone.

A head ``h`` of an attention layer is its rows ``h·d … (h+1)·d − 1`` of the query, key and value projections and the
same columns of the output projection (``d = embed_dim / num_heads``). Its latent multiplies the head's output
``softmax(Q_h K_hᵀ / √d) V_h`` before the output projection — the same as multiplying its value rows, which is how
:func:`pyro_sparse.compact` folds a kept head's test-time multiplier; a pruned head's rows and columns are removed
(:class:`PrunedMultiheadAttention`), exactly: a head contributes to the output only through its value rows.

The same holds for a **qkv attention** — timm's ``Attention`` (``timm.layers.Attention``, the ViT/DeiT blocks) and any
module laid out like it (:func:`is_qkv_attention`): a packed ``qkv`` ``nn.Linear`` whose output is read as
``[3, num_heads, head_dim]``, the heads' outputs concatenated to ``attn_dim = num_heads·head_dim`` features and
``proj`` applied to them. There a head's latent multiplies its ``head_dim`` input features of ``proj`` (a hook), a
kept head's test-time multiplier folds into those columns, and a pruned head's rows of ``qkv`` (and of the optional
``gate`` projection) and columns of ``proj`` are removed in place, with ``num_heads`` and ``attn_dim`` lowered
(:func:`prune_qkv_heads`): the module stays the user's class.

**Hugging Face attention** is handled the same way, in its two layouts: ``BertAttention``-style (a self-attention
child ``attention`` or ``self`` holding separate ``query``/``key``/``value`` ``nn.Linear`` layers of
``all_head_size = num_attention_heads·attention_head_size`` outputs each, the output projection the sibling
``output.dense``) and transformers 5's ``ViTAttention``-style (``q_proj``/``k_proj``/``v_proj``/``o_proj`` and
``head_dim`` in one module). :func:`head_layout` describes all three layouts (where the projection is, which layers
give head-major rows, which attributes hold the head count and width); every function here that takes a "qkv
attention" takes any of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


def head_pruning_problem(m: nn.MultiheadAttention) -> str | None:
    """Why the heads of ``m`` get no latents (``None``: they can); such heads are left dense and reported."""
    if not m._qkv_same_embed_dim:
        return "its keys/values have their own widths (kdim/vdim): separate projections are not handled yet"
    if m.bias_k is not None or m.add_zero_attn:
        return "it adds learned key/value biases (add_bias_kv) or a zero attention slot (add_zero_attn)"
    return None


@dataclass(frozen=True)
class HeadLayout:
    """Where an attention module with separate projections keeps its heads (paths relative to the module).

    :ivar proj: the output projection (an ``nn.Linear`` reading the heads' outputs side by side, head-major).
    :ivar rows: ``(layer, parts)``: layers whose outputs are ``parts`` blocks of head-major features (timm's ``qkv``:
        3; its ``gate``, Hugging Face's ``query``/``key``/``value``: 1).
    :ivar owner: the module holding the head count and width attributes (``""``: the attention module itself).
    :ivar heads, width: the names of those attributes (``width = heads · head size``); ``None`` where the module has
        none (its forward infers them from the projections' sizes).
    :ivar group: query heads per key/value head (grouped-query attention, Ainslie et al. 2023: ``num_key_value_groups``;
        1 otherwise). A unit is then one key/value head with its ``group`` query heads: a query head alone cannot go,
        since the heads left must still share their key/value heads evenly.
    :ivar kv_heads: the name of the attribute holding the number of key/value heads, ``None`` where there is none.
    """

    proj: str
    rows: tuple[tuple[str, int], ...]
    owner: str
    heads: str | None
    width: str | None
    group: int = 1
    kv_heads: str | None = None


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _as_linear(layer) -> nn.Linear | None:
    """``layer`` if it is an ``nn.Linear``, the last layer of a ``Sequential`` that ends in one (a compact network's
    ``Sequential(Select, Linear)`` or ``Sequential(HeadGate, Linear)``), else ``None``."""
    if isinstance(layer, nn.Sequential) and len(layer):
        layer = layer[-1]
    return layer if isinstance(layer, nn.Linear) else None


def head_layout(m: nn.Module) -> HeadLayout | None:
    """The :class:`HeadLayout` of ``m`` if it is laid out as timm's ``Attention`` (``qkv`` and ``proj``
    ``nn.Linear`` layers, integer ``num_heads``, ``head_dim``, ``attn_dim = num_heads·head_dim``, ``qkv`` giving
    ``3·attn_dim`` and ``proj`` taking ``attn_dim`` features) or as Hugging Face's ``ViTAttention`` /
    ``BertAttention`` (a self-attention child ``attention`` or ``self`` with ``query``, ``key``, ``value``
    ``nn.Linear`` layers of ``all_head_size`` outputs and integer ``num_attention_heads``, ``attention_head_size``,
    ``all_head_size``; the output projection ``output.dense`` taking ``all_head_size`` features) or as transformers
    5's ``ViTAttention`` and its kin (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` and an integer ``head_dim``; k and
    v as wide as q, or narrower by a whole factor — grouped-query attention, as ``LlamaAttention`` with
    ``num_key_value_heads < num_attention_heads``, whose units are its key/value heads); else ``None``.
    Their forwards read the head count and width when they reshape, so removing heads in place keeps them valid
    (:func:`pyro_sparse.compact` checks the result against the model)."""
    if isinstance(m, nn.MultiheadAttention):
        return None
    qkv, proj = _as_linear(getattr(m, "qkv", None)), _as_linear(getattr(m, "proj", None))
    if qkv is not None and proj is not None:
        h, d, hd = (getattr(m, a, None) for a in ("num_heads", "head_dim", "attn_dim"))
        if all(_count(v) for v in (h, d, hd)) and hd == h * d and qkv.out_features == 3 * hd and proj.in_features == hd:
            rows = (("qkv", 3),) + ((("gate", 1),) if _as_linear(getattr(m, "gate", None)) is not None else ())
            return HeadLayout("proj", rows, "", "num_heads", "attn_dim")
        return None
    q, k, v, o = (_as_linear(getattr(m, n, None)) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
    if q is not None and k is not None and v is not None and o is not None:  # transformers 5's layout (ViT, ...)
        d = getattr(m, "head_dim", None)
        heads = next((n for n in ("num_attention_heads", "num_heads") if _count(getattr(m, n, None))), None)
        if (_count(d) and k.out_features == v.out_features and k.out_features % d == 0
                and q.out_features % k.out_features == 0 and q.out_features == o.in_features
                and (heads is None or getattr(m, heads) * d == q.out_features)):
            kv = "num_key_value_heads" if _count(getattr(m, "num_key_value_heads", None)) else None
            return HeadLayout("o_proj", (("q_proj", 1), ("k_proj", 1), ("v_proj", 1)), "", heads, None,
                              q.out_features // k.out_features, kv)
        return None
    dense = _as_linear(getattr(getattr(m, "output", None), "dense", None))
    for owner in ("attention", "self"):
        a = getattr(m, owner, None)
        if a is None or dense is None:
            continue
        h, d, hd = (getattr(a, n, None) for n in ("num_attention_heads", "attention_head_size", "all_head_size"))
        layers = [_as_linear(getattr(a, n, None)) for n in ("query", "key", "value")]
        if (all(_count(v) for v in (h, d, hd)) and hd == h * d and dense.in_features == hd
                and all(q is not None and q.out_features == hd for q in layers)):
            return HeadLayout("output.dense", tuple((f"{owner}.{n}", 1) for n in ("query", "key", "value")), owner,
                              "num_attention_heads", "all_head_size")
    return None


def is_qkv_attention(m: nn.Module) -> bool:
    """Whether ``m`` is an attention module with separate projections whose heads :func:`head_layout` describes
    (timm's or one of Hugging Face's layouts)."""
    return head_layout(m) is not None


def head_count(m: nn.Module) -> int:
    """The number of head units of an ``nn.MultiheadAttention`` or a qkv attention (:func:`head_layout`): its heads,
    or under grouped-query attention its key/value heads (each with its ``group`` query heads; the output
    projection reads a unit's query heads' outputs side by side, ``proj.in_features / head_count`` features)."""
    if isinstance(m, nn.MultiheadAttention):
        return m.num_heads
    layout = head_layout(m)
    if layout.heads is not None:
        return getattr(m.get_submodule(layout.owner) if layout.owner else m, layout.heads) // layout.group
    return _as_linear(m.get_submodule(layout.proj)).in_features // (m.head_dim * layout.group)


def head_projection(m: nn.Module) -> tuple[str, nn.Module]:
    """``(path relative to m, layer)`` of a qkv attention's output projection (a compact network may hold it
    wrapped: ``Sequential(..., Linear)``)."""
    path = head_layout(m).proj
    return path, m.get_submodule(path)


def qkv_head_problem(m: nn.Module) -> str | None:
    """Why the heads of the qkv attention ``m`` get no latents (``None``: they can)."""
    norm = getattr(m, "norm", None)
    if norm is not None and not isinstance(norm, nn.Identity):
        return "a normalisation over all heads' outputs (scale_norm) sits before its output projection"
    gate = getattr(m, "gate", None)
    if gate is not None and head_layout(m).proj == "proj" and not (
            isinstance(gate, nn.Linear) and gate.out_features == m.attn_dim):
        return "its output gate is not an nn.Linear giving one value per head feature"
    return None


@torch.no_grad()
def prune_qkv_heads(m: nn.Module, kept: list[int]) -> None:
    """Keep only the heads ``kept`` of the qkv attention ``m`` (:func:`head_layout`), in place: each kept head's rows
    of the row layers (timm: ``qkv``'s query, key and value rows and ``gate``'s; Hugging Face: ``query``, ``key``,
    ``value``), the same input columns of the output projection; the head count and width lowered to match. Under
    grouped-query attention ``kept`` counts key/value heads (:func:`head_count`): each keeps its row of ``k_proj``
    and ``v_proj`` and its query heads' rows of ``q_proj``.

    :raises ValueError: ``kept`` is empty, repeats a head or names one ``m`` has not."""
    layout = head_layout(m)
    owner = m.get_submodule(layout.owner) if layout.owner else m
    h = head_count(m)
    proj = _as_linear(m.get_submodule(layout.proj))
    width = proj.in_features
    d = width // h
    if not kept or len(set(kept)) != len(kept) or not all(0 <= i < h for i in kept):
        raise ValueError(f"kept heads must be distinct indices in 0 … {h - 1}, at least one; got {kept}")
    cols = _head_block(kept, d, width, 1, proj.weight.device)
    for path, parts in layout.rows:
        layer = _as_linear(m.get_submodule(path))
        rows_width = layer.out_features // parts  # (grouped-query attention: k/v narrower than q)
        _keep_rows(layer, _head_block(kept, rows_width // h, rows_width, parts, proj.weight.device))
    proj.weight = nn.Parameter(proj.weight[:, cols].clone(), proj.weight.requires_grad)
    proj.in_features = cols.numel()
    for attr, value in ((layout.heads, len(kept) * layout.group), (layout.width, len(kept) * d),
                        (layout.kv_heads, len(kept))):
        if attr is not None:
            setattr(owner, attr, value)


def _head_block(kept: list[int], d: int, width: int, parts: int, device) -> torch.Tensor:
    """The indices of the heads ``kept`` (``d`` features each) in each of ``parts`` blocks of ``width`` features."""
    one = torch.tensor([i * d + j for i in kept for j in range(d)], device=device)
    return torch.cat([one + part * width for part in range(parts)])


def _keep_rows(layer: nn.Linear, rows: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight[rows].clone(), layer.weight.requires_grad)
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias[rows].clone(), layer.bias.requires_grad)
    layer.out_features = rows.numel()


def heads_of_features(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[B, T, H·d]`` (heads' outputs side by side, as ``proj`` reads them) → ``[B, H, T, d]`` (a view)."""
    return x.unflatten(-1, (num_heads, -1)).transpose(-3, -2)


def features_of_heads(o: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`heads_of_features`: ``[B, H, T, d]`` → ``[B, T, H·d]``."""
    return o.transpose(-3, -2).flatten(-2)


class HeadGate(nn.Module):
    """A compact DBB network's head gate in front of a qkv attention's ``proj``: ``gate`` (a
    :class:`~pyro_sparse.nn.DynamicGate` over ``num_heads`` units) applied to the heads' outputs ``[B, H, T, d]``;
    ``forward(x [B, T, H·d]) -> [B, T, H·d]``."""

    def __init__(self, gate: nn.Module, num_heads: int):
        super().__init__()
        self.gate, self.num_heads = gate, num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return features_of_heads(self.gate(heads_of_features(x, self.num_heads)))


def _mask(key_padding_mask, attn_mask, batch: int, heads: int, q_len: int, k_len: int, dtype) -> torch.Tensor | None:
    """``nn.MultiheadAttention``'s masks (bool: ``True`` = not attended; float: added) as one additive float mask
    broadcastable to ``[B, H, T, S]``, or ``None``."""
    out = None
    for m, shape in ((attn_mask, None), (key_padding_mask, (batch, 1, 1, k_len))):
        if m is None:
            continue
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        else:
            m = m.to(dtype)
        if shape is not None:
            m = m.view(shape)
        elif m.dim() == 3:  # [B·H, T, S]
            m = m.view(batch, heads, q_len, k_len)
        out = m if out is None else out + m
    return out


def multihead_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, num_heads: int,
                        in_proj_weight: torch.Tensor, in_proj_bias: torch.Tensor | None,
                        out_proj_weight: torch.Tensor, out_proj_bias: torch.Tensor | None, *,
                        key_padding_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                        need_weights: bool = False, average_attn_weights: bool = True, is_causal: bool = False,
                        dropout_p: float = 0.0,
                        head_multiplier: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """Multi-head attention on batch-first inputs, as ``nn.MultiheadAttention`` computes it (packed projections).

    :param query: ``[B, T, E]``; ``key``, ``value``: ``[B, S, E]`` (the same tensor for self-attention).
    :param in_proj_weight: ``[3·H·d, E]`` (query, key, value rows; ``H = num_heads`` heads of width ``d``);
        ``out_proj_weight``: ``[E_out, H·d]``.
    :param key_padding_mask: ``[B, S]``; ``attn_mask``: ``[T, S]`` or ``[B·H, T, S]``; bool (``True``: not attended)
        or float (added to the scores).
    :param head_multiplier: called on the heads' outputs ``[B, H, T, d]``, returns them multiplied by the heads'
        latents (``None``: unchanged).
    :returns: ``(output [B, T, E_out], attention weights [B, T, S] (averaged over heads) or [B, H, T, S], or None)``.
    """
    b, t, _ = query.shape
    s = key.shape[1]
    hd = in_proj_weight.shape[0] // 3
    d = hd // num_heads
    if query is key and key is value:  # self-attention: one product with the packed weights
        q, k, v = F.linear(query, in_proj_weight, in_proj_bias).chunk(3, dim=-1)
    else:
        w = in_proj_weight.chunk(3)
        bias = in_proj_bias.chunk(3) if in_proj_bias is not None else (None,) * 3
        q, k, v = (F.linear(x, wi, bi) for x, wi, bi in zip((query, key, value), w, bias, strict=True))
    q = q.reshape(b, t, num_heads, d).transpose(1, 2)
    k = k.reshape(b, s, num_heads, d).transpose(1, 2)
    v = v.reshape(b, s, num_heads, d).transpose(1, 2)
    mask = _mask(key_padding_mask, attn_mask, b, num_heads, t, s, q.dtype)
    weights = None
    if need_weights:
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)
        if mask is not None:
            scores = scores + mask
        elif is_causal:
            scores = scores.masked_fill(torch.ones(t, s, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        weights = scores.softmax(-1)
        o = F.dropout(weights, dropout_p) @ v if dropout_p > 0 else weights @ v
        if average_attn_weights:
            weights = weights.mean(1)
    else:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                           is_causal=is_causal and mask is None)
    if head_multiplier is not None:
        o = head_multiplier(o)
    out = F.linear(o.transpose(1, 2).reshape(b, t, hd), out_proj_weight, out_proj_bias)
    return out, weights


def _bind_mha_args(args: tuple, kwargs: dict) -> dict:
    names = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias", "bias_k",
             "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
             "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
             "k_proj_weight", "v_proj_weight", "static_k", "static_v", "average_attn_weights", "is_causal")
    bound = dict(zip(names, args, strict=False))
    bound.update(kwargs)
    return bound


def attention_call(a: dict, head_multiplier: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """``F.multi_head_attention_forward``'s call (its arguments bound by name, sequence-first ``[T, B, E]`` or
    unbatched ``[T, E]`` inputs, as ``nn.MultiheadAttention`` makes it) computed by :func:`multihead_attention`;
    returns ``(output, weights or None)`` in the call's layout."""
    batched = a["query"].dim() == 3
    q, k, v = (a[n] if batched else a[n].unsqueeze(1) for n in ("query", "key", "value"))
    same = a["query"] is a["key"] and a["key"] is a["value"]
    q = q.transpose(0, 1)
    k, v = (q, q) if same else (k.transpose(0, 1), v.transpose(0, 1))
    kpm = a.get("key_padding_mask")
    out, weights = multihead_attention(
        q, k, v, a["num_heads"], a["in_proj_weight"], a["in_proj_bias"], a["out_proj_weight"], a["out_proj_bias"],
        key_padding_mask=None if kpm is None else (kpm if batched else kpm.unsqueeze(0)),
        attn_mask=a.get("attn_mask"), need_weights=a.get("need_weights", True),
        average_attn_weights=a.get("average_attn_weights", True), is_causal=a.get("is_causal", False),
        dropout_p=a["dropout_p"] if a.get("training", True) else 0.0, head_multiplier=head_multiplier)
    out = out.transpose(0, 1)
    if not batched:
        out = out.squeeze(1)
        weights = None if weights is None else weights.squeeze(0)
    return out, weights


def packed_call(a: dict) -> bool:
    """Whether a bound ``F.multi_head_attention_forward`` call is one :func:`attention_call` computes (packed
    projections, no key/value biases or zero slot, no static keys)."""
    return (a.get("in_proj_weight") is not None and not a.get("use_separate_proj_weight", False)
            and a.get("bias_k") is None and not a.get("add_zero_attn") and a.get("static_k") is None
            and a.get("static_v") is None)


class HeadLatents(TorchFunctionMode):
    """While active, every ``F.multi_head_attention_forward`` call of an ``nn.MultiheadAttention`` whose output
    projection weight is a key of ``multipliers`` (by identity) runs through :func:`multihead_attention` with that
    head multiplier; other calls run unchanged. ``nn.MultiheadAttention`` calls that function with sequence-first
    inputs ``[T, B, E]`` (it transposes batch-first ones itself)."""

    def __init__(self, multipliers: dict[int, Callable[[torch.Tensor], torch.Tensor]]):
        super().__init__()
        self.multipliers = multipliers

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.multi_head_attention_forward:
            return func(*args, **kwargs)
        a = _bind_mha_args(args, kwargs)
        multiplier = self.multipliers.get(id(a["out_proj_weight"]))
        if multiplier is None:
            return func(*args, **kwargs)
        return attention_call(a, multiplier)


class PrunedMultiheadAttention(nn.Module):
    """An ``nn.MultiheadAttention`` with fewer heads: ``num_heads`` heads of width ``head_dim`` (the original
    width), so its inner width ``num_heads·head_dim`` is below ``embed_dim``, which torch's module cannot hold. Same
    call as ``nn.MultiheadAttention`` (``forward(query, key, value, key_padding_mask=None, need_weights=True,
    attn_mask=None, average_attn_weights=True, is_causal=False)`` → ``(output, weights or None)``), evaluation only
    (no dropout).

    :ivar kept: the indices of the original heads it holds (``[num_heads]``, a buffer).
    :ivar gate: ``None``, or a module applied to the heads' outputs ``[B, num_heads, T, head_dim]`` before the output
        projection (a DBB network's :class:`~pyro_sparse.nn.DynamicGate`: input-dependent head gates).
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True, batch_first: bool = False):
        super().__init__()
        hd = num_heads * head_dim
        self.embed_dim, self.num_heads, self.head_dim, self.batch_first = embed_dim, num_heads, head_dim, batch_first
        self.in_proj_weight = nn.Parameter(torch.empty(3 * hd, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * hd)) if bias else None
        self.out_proj = nn.Linear(hd, embed_dim, bias=bias)
        self.register_buffer("kept", torch.arange(num_heads))
        self.gate: nn.Module | None = None

    @classmethod
    @torch.no_grad()
    def from_attention(cls, m: nn.MultiheadAttention, kept: list[int]) -> PrunedMultiheadAttention:
        """The heads ``kept`` (indices into ``m``'s heads) of ``m``, with their weights.

        :raises ValueError: ``m`` has a layout :func:`head_pruning_problem` names, or ``kept`` is empty, repeats a
            head or names one ``m`` has not."""
        problem = head_pruning_problem(m)
        if problem:
            raise ValueError(f"cannot prune the heads of this nn.MultiheadAttention: {problem}")
        if not kept or len(set(kept)) != len(kept) or not all(0 <= h < m.num_heads for h in kept):
            raise ValueError(f"kept heads must be distinct indices in 0 … {m.num_heads - 1}, at least one; got {kept}")
        d = m.head_dim
        new = cls(m.embed_dim, len(kept), d, m.in_proj_bias is not None, m.batch_first).to(m.in_proj_weight)
        rows = torch.tensor([h * d + i for h in kept for i in range(d)], device=m.in_proj_weight.device)
        e = m.embed_dim
        all_rows = torch.cat([rows, rows + e, rows + 2 * e])
        new.in_proj_weight.copy_(m.in_proj_weight[all_rows])
        if m.in_proj_bias is not None:
            new.in_proj_bias.copy_(m.in_proj_bias[all_rows])
            new.out_proj.bias.copy_(m.out_proj.bias)
        new.out_proj.weight.copy_(m.out_proj.weight[:, rows])
        new.kept.copy_(torch.tensor(kept))
        return new.train(m.training)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            same = query is key and key is value
            query = query.transpose(0, 1)
            key, value = (query, query) if same else (key.transpose(0, 1), value.transpose(0, 1))
        out, weights = multihead_attention(
            query, key, value, self.num_heads, self.in_proj_weight, self.in_proj_bias, self.out_proj.weight,
            self.out_proj.bias, key_padding_mask=key_padding_mask, attn_mask=attn_mask, need_weights=need_weights,
            average_attn_weights=average_attn_weights, is_causal=is_causal, head_multiplier=self.gate)
        if not batched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights
