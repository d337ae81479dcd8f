"""Mamba block with mamba-ssm's parameters, a CUDA fast path and a pure-PyTorch path.

``Mamba`` mirrors ``mamba_ssm.modules.mamba_simple.Mamba``: same constructor, same
parameter names, shapes and initialisation, so a state dict moves between a GPU machine
running mamba-ssm's kernels and a CPU running :func:`cascade.nn.scan.selective_scan`.
mamba-ssm is imported lazily, only when the fast path is actually taken.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from einops import rearrange
from torch import Tensor, nn

from cascade.nn.scan import selective_scan, selective_scan_ref

__all__ = ["Mamba", "BiMamba", "SCANS"]

# name -> selective scan with mamba-ssm's signature; "ref" is the sequential reference
SCANS: dict[str, Callable[..., Tensor]] = {"parallel": selective_scan, "ref": selective_scan_ref}


@functools.lru_cache(maxsize=1)
def _fast_ops() -> tuple[Callable | None, Callable | None, Callable | None]:
    """(mamba_inner_fn, selective_scan_fn, causal_conv1d_fn) from mamba-ssm, or Nones.

    Any import failure (package absent, CUDA extension missing) means "no fast path".
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
    except Exception:  # ImportError, or OSError/RuntimeError from a broken extension
        return None, None, None
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:
        causal_conv1d_fn = None
    return mamba_inner_fn, selective_scan_fn, causal_conv1d_fn


class Mamba(nn.Module):
    """Selective state-space block (Gu & Dao 2023), causal along L.

    forward: hidden_states (B, L, d_model) -> (B, L, d_model).
    ``scan`` picks the pure-PyTorch scan ("parallel" or the sequential "ref").
    ``layer_idx`` is accepted for signature compatibility (no inference cache here).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, use_fast_path: bool = True,
                 layer_idx: int | None = None, device=None, dtype=None,
                 scan: str = "parallel") -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        if scan not in SCANS:
            raise ValueError(f"unknown scan {scan!r}; choose one of {sorted(SCANS)}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx
        self.scan = scan

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory)
        # depthwise; padding d_conv-1 then keeping the first L outputs makes it causal
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv,
                                groups=self.d_inner, padding=d_conv - 1, bias=conv_bias,
                                **factory)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        # dt_proj.weight keeps the variance of dt at init
        dt_init_std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        # dt bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max]
        dt = torch.exp(torch.rand(self.d_inner, **factory)
                       * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
                       ).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)
        self.dt_proj.bias._no_reinit = True

        # S4D-real init: A = -(1..N) for every channel; A_log and D stay float32
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device)
        self.A_log = nn.Parameter(torch.log(A).repeat(self.d_inner, 1).contiguous())  # (D, N)
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True

        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _fast_path_ok(self, x: Tensor) -> bool:
        return self.use_fast_path and x.is_cuda and _fast_ops()[0] is not None

    def forward(self, hidden_states: Tensor) -> Tensor:
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(f"Mamba expects (B, L, {self.d_model}), "
                             f"got {tuple(hidden_states.shape)}")
        seqlen = hidden_states.shape[1]
        xz = rearrange(self.in_proj(hidden_states), "b l d -> b d l")  # (B, 2*D_in, L)
        A = -torch.exp(self.A_log.float())  # (D_in, N)
        if self._fast_path_ok(hidden_states):
            return self._forward_fast(xz, A, seqlen)

        x, z = xz.chunk(2, dim=1)  # (B, D_in, L) each
        x = self.act(self.conv1d(x)[..., :seqlen])
        dt, B, C = self._project(x, seqlen)
        y = SCANS[self.scan](x, dt, A, B, C, self.D.float(), z=z,
                             delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(rearrange(y, "b d l -> b l d"))

    def _project(self, x: Tensor, seqlen: int) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, D_in, L) -> dt (B, D_in, L) without bias, B and C (B, N, L)."""
        x_dbl = self.x_proj(rearrange(x, "b d l -> (b l) d"))  # (B*L, R + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = rearrange(self.dt_proj.weight @ dt.t(), "d (b l) -> b d l", l=seqlen)
        B = rearrange(B, "(b l) n -> b n l", l=seqlen).contiguous()
        C = rearrange(C, "(b l) n -> b n l", l=seqlen).contiguous()
        return dt, B, C

    def _forward_fast(self, xz: Tensor, A: Tensor, seqlen: int) -> Tensor:
        mamba_inner_fn, selective_scan_fn, causal_conv1d_fn = _fast_ops()
        if causal_conv1d_fn is not None:
            # the fused kernel, called exactly as mamba_ssm.Mamba.forward does
            return mamba_inner_fn(xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                                  self.dt_proj.weight, self.out_proj.weight, self.out_proj.bias,
                                  A, None, None, self.D.float(),
                                  delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        # mamba_inner_fn needs causal-conv1d; without it use the CUDA scan alone
        x, z = xz.chunk(2, dim=1)
        x = self.act(self.conv1d(x)[..., :seqlen])
        dt, B, C = self._project(x, seqlen)
        y = selective_scan_fn(x.contiguous(), dt.contiguous(), A, B, C, self.D.float(),
                              z=z.contiguous(), delta_bias=self.dt_proj.bias.float(),
                              delta_softplus=True)
        return self.out_proj(rearrange(y, "b d l -> b l d"))


class BiMamba(nn.Module):
    """Bidirectional residual Mamba layer for tokens with no causal order (image patches).

    out = x + (fwd(n) + flip(bwd(flip(n)))) / 2,  n = norm(x).
    Two Mambas with separate weights (as Vision Mamba's "bimamba v2"); the two directions
    are averaged rather than summed so that the residual branch has the scale of one
    Mamba at initialisation. ``norm`` is "rms" (as in Mamba/Vim) or "layer".
    Remaining keyword arguments go to both :class:`Mamba` instances.

    forward: x (B, L, d_model) -> (B, L, d_model).
    """

    def __init__(self, d_model: int, norm: str = "rms", norm_eps: float = 1e-5, **kw) -> None:
        super().__init__()
        if norm == "rms":
            self.norm: nn.Module = nn.RMSNorm(d_model, eps=norm_eps)
        elif norm == "layer":
            self.norm = nn.LayerNorm(d_model, eps=norm_eps)
        else:
            raise ValueError(f"norm must be 'rms' or 'layer', got {norm!r}")
        self.fwd = Mamba(d_model, **kw)
        self.bwd = Mamba(d_model, **kw)

    def forward(self, x: Tensor) -> Tensor:
        n = self.norm(x)  # (B, L, D)
        y = self.fwd(n) + self.bwd(n.flip(1)).flip(1)
        return x + 0.5 * y
