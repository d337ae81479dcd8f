"""Cross-attention in which every query has its own small set of keys.

Used by the LAINR decoder: each query coordinate attends to the latent tokens of its own
neighbourhood, so keys arrive already gathered per query, (..., K, D), instead of being
shared by all queries. The cost is O(K) per query, independent of how many tokens exist.
"""

from __future__ import annotations

from einops import rearrange
from torch import Tensor, nn

__all__ = ["local_attention", "LocalCrossAttention"]


def local_attention(
    q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Tensor | None = None
) -> Tensor:
    """Multi-head softmax attention of one query over its own K keys.

    q: (..., D); k, v: (..., K, D); mask: (..., K) bool, True = attend (at least one per
    query). Returns (..., D). D must be divisible by ``heads``; scores are scaled by
    1/sqrt(D / heads), as in ``F.scaled_dot_product_attention``.

    Written as broadcast products and sums rather than matmuls: with one query and a
    handful of keys per item, SDPA/bmm on a CPU run millions of tiny matmuls and were
    4x slower (fwd+bwd, 8192 queries x 9 keys) than this.
    """
    if q.shape[-1] % heads:
        raise ValueError(f"width {q.shape[-1]} is not divisible by heads={heads}")
    qh = rearrange(q, "... (h d) -> ... 1 h d", h=heads)  # (..., 1, H, Dh)
    kh = rearrange(k, "... k (h d) -> ... k h d", h=heads)  # (..., K, H, Dh)
    vh = rearrange(v, "... k (h d) -> ... k h d", h=heads)
    scores = (qh * kh).sum(-1) * qh.shape[-1] ** -0.5  # (..., K, H)
    if mask is not None:
        scores = scores.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    attn = scores.softmax(dim=-2)  # over the K keys
    return rearrange((attn.unsqueeze(-1) * vh).sum(-3), "... h d -> ... (h d)")


class LocalCrossAttention(nn.Module):
    """Query projection, :func:`local_attention`, output projection.

    Keys and values are passed in already projected: the caller projects the token grid
    once and gathers per query, which is cheaper than projecting every gathered copy.
    """

    def __init__(self, query_dim: int, inner_dim: int, out_dim: int, heads: int) -> None:
        super().__init__()
        if inner_dim % heads:
            raise ValueError(f"inner_dim={inner_dim} is not divisible by heads={heads}")
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim)
        self.to_out = nn.Linear(inner_dim, out_dim)

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (..., query_dim); k, v: (..., K, inner_dim); mask: (..., K) -> (..., out_dim)."""
        return self.to_out(local_attention(self.to_q(x), k, v, self.heads, mask))
