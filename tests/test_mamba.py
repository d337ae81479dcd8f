"""Mamba / BiMamba: mamba-ssm compatible parameters, pure path, fast-path wiring."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import cascade.nn.mamba as mamba_mod
from cascade.nn import BiMamba, Mamba
from cascade.nn.scan import selective_scan_ref

# mamba_ssm.modules.mamba_simple.Mamba(d_model=24, d_state=8) (bias=False, conv_bias=True):
# d_inner = 48, dt_rank = ceil(24 / 16) = 2. Own parameters come before submodules.
MAMBA_SSM_STATE = [
    ("A_log", (48, 8)),
    ("D", (48,)),
    ("in_proj.weight", (96, 24)),
    ("conv1d.weight", (48, 1, 4)),
    ("conv1d.bias", (48,)),
    ("x_proj.weight", (18, 48)),
    ("dt_proj.weight", (48, 2)),
    ("dt_proj.bias", (48,)),
    ("out_proj.weight", (24, 48)),
]


def test_state_dict_matches_mamba_ssm():
    sd = Mamba(24, d_state=8).state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == MAMBA_SSM_STATE


def test_bias_flags_add_mamba_ssm_bias_keys():
    keys = set(Mamba(24, d_state=8, bias=True, conv_bias=False).state_dict())
    assert keys == {k for k, _ in MAMBA_SSM_STATE} - {"conv1d.bias"} | {"in_proj.bias",
                                                                      "out_proj.bias"}


def test_initialisation_matches_mamba_ssm():
    torch.manual_seed(0)
    m = Mamba(32, d_state=16, dt_min=0.001, dt_max=0.1)
    assert m.dt_rank == 2 and m.d_inner == 64
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1.0, 17.0)).expand(64, 16))
    torch.testing.assert_close(m.D, torch.ones(64))
    dt = F.softplus(m.dt_proj.bias)  # bias is the inverse softplus of dt in [dt_min, dt_max]
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert dt.std() > 0  # random, log-uniform
    bound = m.dt_rank ** -0.5
    assert m.dt_proj.weight.abs().max() <= bound
    const = Mamba(32, dt_init="constant", dt_scale=2.0)
    torch.testing.assert_close(const.dt_proj.weight,
                               torch.full((64, 2), 2.0 * bound))
    with pytest.raises(ValueError, match="dt_init"):
        Mamba(8, dt_init="zeros")


@pytest.mark.parametrize("L", [1, 7, 33])
def test_forward_shape_odd_lengths(L):
    m = Mamba(16, d_state=4)
    y = m(torch.randn(3, L, 16))
    assert y.shape == (3, L, 16) and torch.isfinite(y).all()


def test_wrong_input_shape_is_explained():
    with pytest.raises(ValueError, match=r"\(B, L, 16\)"):
        Mamba(16)(torch.randn(2, 5, 8))


def test_mamba_is_causal():
    torch.manual_seed(0)
    m = Mamba(16, d_state=4)
    x = torch.randn(2, 12, 16)
    x2 = x.clone()
    x2[:, 6] += 1.0
    y, y2 = m(x), m(x2)
    torch.testing.assert_close(y[:, :6], y2[:, :6])
    assert (y[:, 6:] - y2[:, 6:]).abs().max() > 1e-4


def test_one_sgd_step_changes_every_parameter():
    torch.manual_seed(0)
    # float64: in float32 the tiny first step on dt_proj.bias (~ -4.6) rounds away
    m = Mamba(16, d_state=4, bias=True).double()
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(torch.randn(2, 9, 16, dtype=torch.float64)).pow(2).mean().backward()
    opt.step()
    unchanged = [k for k, v in m.named_parameters() if torch.equal(v, before[k])]
    assert unchanged == []


def test_parallel_path_equals_reference_path():
    torch.manual_seed(0)
    m = Mamba(16, d_state=4).double()
    x = torch.randn(2, 21, 16, dtype=torch.float64)
    ref = Mamba(16, d_state=4, scan="ref").double()
    ref.load_state_dict(m.state_dict())
    y, y_ref = m(x), ref(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)
    y.sum().backward()
    y_ref.sum().backward()
    for (k, p), (_, q) in zip(m.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-7, atol=1e-9, msg=k)
    with pytest.raises(ValueError, match="scan"):
        Mamba(16, scan="fast")


def _mamba_inner_ref(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                     out_proj_weight, out_proj_bias, A, B=None, C=None, D=None,
                     delta_bias=None, B_proj_bias=None, C_proj_bias=None, delta_softplus=True):
    """mamba_ssm.ops.selective_scan_interface.mamba_inner_ref (real A, variable B/C),
    with causal_conv1d_fn written as a padded conv; stands in for the fused kernel."""
    L = xz.shape[-1]
    delta_rank = delta_proj_weight.shape[1]
    d_state = A.shape[-1]
    x, z = xz.chunk(2, dim=1)
    x = F.silu(F.conv1d(x, conv1d_weight, conv1d_bias, padding=conv1d_weight.shape[-1] - 1,
                        groups=x.shape[1])[..., :L])
    x_dbl = F.linear(rearrange(x, "b d l -> (b l) d"), x_proj_weight)
    delta = rearrange(delta_proj_weight @ x_dbl[:, :delta_rank].t(), "d (b l) -> b d l", l=L)
    B = rearrange(x_dbl[:, delta_rank:delta_rank + d_state], "(b l) n -> b n l", l=L)
    C = rearrange(x_dbl[:, -d_state:], "(b l) n -> b n l", l=L)
    y = selective_scan_ref(x, delta, A, B, C, D, z=z, delta_bias=delta_bias,
                           delta_softplus=delta_softplus)
    return F.linear(rearrange(y, "b d l -> b l d"), out_proj_weight, out_proj_bias)


@pytest.mark.parametrize("fused", [True, False])
def test_fast_path_wiring(monkeypatch, fused):
    # CPU stand-ins with mamba-ssm's signatures check the arguments we pass to its kernels.
    def conv_stub(*a, **k):
        raise AssertionError("only its presence matters")

    ops = (_mamba_inner_ref, selective_scan_ref, conv_stub if fused else None)
    monkeypatch.setattr(mamba_mod, "_fast_ops", lambda: ops)
    torch.manual_seed(0)
    m = Mamba(16, d_state=4, bias=True).double()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    want = m(x)
    monkeypatch.setattr(Mamba, "_fast_path_ok", lambda self, x: True)
    torch.testing.assert_close(m(x), want, rtol=1e-9, atol=1e-9)


def test_no_fast_path_without_mamba_ssm(monkeypatch):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # makes the import fail
    mamba_mod._fast_ops.cache_clear()
    try:
        assert mamba_mod._fast_ops() == (None, None, None)
        assert not Mamba(8)._fast_path_ok(torch.zeros(1, 2, 8))
    finally:
        mamba_mod._fast_ops.cache_clear()


def test_importing_cascade_nn_never_imports_mamba_ssm():
    code = ("import sys; import cascade, cascade.nn, torch; "
            "cascade.nn.Mamba(8)(torch.zeros(1, 3, 8)); "
            "assert 'mamba_ssm' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for mamba-ssm's kernels")
def test_fast_path_matches_reference_on_cuda():
    pytest.importorskip("mamba_ssm", reason="mamba-ssm not installed (optional extra 'cuda')")
    if mamba_mod._fast_ops()[0] is None:
        pytest.skip("mamba-ssm is installed but its CUDA extension does not import")
    torch.manual_seed(0)
    fast = Mamba(32, d_state=16).cuda()
    slow = Mamba(32, d_state=16, use_fast_path=False).cuda()
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 64, 32, device="cuda")
    y_fast, y_slow = fast(x), slow(x)
    torch.testing.assert_close(y_fast, y_slow, rtol=1e-3, atol=1e-3)
    y_fast.square().sum().backward()
    y_slow.square().sum().backward()
    for (k, p), (_, q) in zip(fast.named_parameters(), slow.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-2, atol=1e-2, msg=k)


def _grad_of_first_output_wrt_last_token(m):
    x = torch.randn(2, 10, 16, dtype=torch.float64, requires_grad=True)
    m(x)[:, 0].sum().backward()
    return x.grad[:, -1].abs().max().item()


def test_bimamba_is_not_causal():
    torch.manual_seed(0)
    # the influence of token 9 on position 0 decays like exp(-9 dt |A|): it is small
    # but exactly zero for a causal layer
    assert _grad_of_first_output_wrt_last_token(BiMamba(16, d_state=4).double()) > 1e-8
    assert _grad_of_first_output_wrt_last_token(Mamba(16, d_state=4).double()) == 0.0


def test_bimamba_averages_both_directions_residually():
    torch.manual_seed(0)
    m = BiMamba(16, norm="layer", d_state=4)
    x = torch.randn(2, 7, 16)
    n = m.norm(x)
    want = x + 0.5 * (m.fwd(n) + m.bwd(n.flip(1)).flip(1))
    torch.testing.assert_close(m(x), want)
    with pytest.raises(ValueError, match="norm"):
        BiMamba(16, norm="batch")


@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_bimamba_state_dict_round_trip(norm):
    torch.manual_seed(0)
    a = BiMamba(16, norm=norm, d_state=4)
    b = BiMamba(16, norm=norm, d_state=4)
    x = torch.randn(1, 9, 16)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict(), strict=True)
    torch.testing.assert_close(a(x), b(x))
    # each direction carries mamba-ssm's parameter names
    assert {k.split(".", 1)[1] for k in a.state_dict() if k.startswith("fwd.")} == {
        k for k, _ in MAMBA_SSM_STATE}
    assert math.isfinite(a(x).sum().item())
