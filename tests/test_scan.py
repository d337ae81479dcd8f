"""The parallel selective scan against the sequential reference written from the paper."""

import pytest
import torch

import cascade.nn.scan as scan_mod
from cascade.nn.scan import scan_, selective_scan, selective_scan_ref

LENGTHS = [1, 7, 64, 100, 257]
# (use z, use D, use delta_bias, delta_softplus)
OPTIONS = [(False, False, False, False), (True, True, True, True), (True, False, False, True),
           (False, True, True, False)]


def make_inputs(L, b=2, d=3, n=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return {
        "u": r(b, d, L),
        "delta": r(b, d, L) * 0.5,
        "A": -torch.rand(d, n, generator=g, dtype=dtype) * 2 - 0.1,
        "B": r(b, n, L),
        "C": r(b, n, L),
        "D": r(d),
        "z": r(b, d, L),
        "delta_bias": r(d) * 0.5,
    }


def run(fn, inputs, opts, return_last_state=False):
    """Outputs of ``fn`` and gradients of a fixed random projection of them."""
    use_z, use_D, use_bias, softplus = opts
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    args = [leaves[k] for k in ("u", "delta", "A", "B", "C")]
    out = fn(*args, D=leaves["D"] if use_D else None, z=leaves["z"] if use_z else None,
             delta_bias=leaves["delta_bias"] if use_bias else None, delta_softplus=softplus,
             return_last_state=return_last_state)
    outs = out if return_last_state else (out,)
    g = torch.Generator().manual_seed(1)
    # drawn in float64 so that float32 and float64 runs get the same projection
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)).sum()
               for o in outs)
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items() if v.grad is not None}
    return [o.detach() for o in outs], grads


def assert_same(a, b, **tol):
    outs_a, grads_a = a
    outs_b, grads_b = b
    for x, y in zip(outs_a, outs_b):
        torch.testing.assert_close(x, y, **tol)
    assert grads_a.keys() == grads_b.keys()
    for k in grads_a:
        torch.testing.assert_close(grads_a[k], grads_b[k], **tol, msg=lambda m: f"d/d{k}: {m}")


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("opts", OPTIONS)
def test_parallel_matches_reference_float64(L, opts):
    inputs = make_inputs(L)
    assert_same(run(selective_scan, inputs, opts), run(selective_scan_ref, inputs, opts),
                rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("L", LENGTHS)
def test_parallel_float32_matches_float64_reference(L):
    opts = OPTIONS[1]
    inputs = make_inputs(L)
    got = run(selective_scan, {k: v.float() for k, v in inputs.items()}, opts)
    want = run(selective_scan_ref, inputs, opts)
    assert got[0][0].dtype == torch.float32
    assert_same(got, ([o.float() for o in want[0]], {k: v.float() for k, v in want[1].items()}),
                rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("schedule", ["time_chunks", "stream", "blocked_wide"])
@pytest.mark.parametrize("L", [7, 100])
def test_every_schedule_matches_reference(monkeypatch, schedule, L):
    # Tiny shapes take the single-chunk blocked path by default; force the others.
    if schedule == "time_chunks":  # several time chunks of 5 steps, carried states
        monkeypatch.setattr(scan_mod, "_CHUNK_ELEMS", 2 * 3 * 4 * 5)
    elif schedule == "stream":  # one row per step
        monkeypatch.setattr(scan_mod, "_WIDE_STEP", 1)
    else:  # blocked and time-chunked together
        monkeypatch.setattr(scan_mod, "_CHUNK_ELEMS", 2 * 3 * 4 * 9)
    inputs = make_inputs(L, seed=3)
    opts = OPTIONS[1]
    assert_same(run(selective_scan, inputs, opts, return_last_state=True),
                run(selective_scan_ref, inputs, opts, return_last_state=True),
                rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("L", [1, 2, 33])
def test_last_state_and_its_gradient(L):
    inputs = make_inputs(L, seed=5)
    got = run(selective_scan, inputs, OPTIONS[0], return_last_state=True)
    want = run(selective_scan_ref, inputs, OPTIONS[0], return_last_state=True)
    assert got[0][1].shape == (2, 3, 4)
    assert_same(got, want, rtol=1e-5, atol=1e-5)


def test_gradcheck_independent_of_reference():
    x = make_inputs(9, b=1, d=2, n=3, seed=7)
    args = tuple(x[k].requires_grad_() for k in ("u", "delta", "A", "B", "C", "D", "z"))

    def fn(u, delta, A, B, C, D, z):
        return selective_scan(u, delta, A, B, C, D=D, z=z, delta_softplus=True)

    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("L,chunk", [(1, None), (2, None), (10, 3), (17, 4), (64, None),
                                     (65, 8), (100, 100)])
def test_scan_inplace_matches_loop(L, chunk, reverse):
    g = torch.Generator().manual_seed(L)
    a = torch.rand(L, 5, generator=g, dtype=torch.float64)
    x = torch.randn(L, 5, generator=g, dtype=torch.float64)
    want = x.clone()
    idx = range(L - 2, -1, -1) if reverse else range(1, L)
    for t in idx:
        want[t] = a[t] * want[t + (1 if reverse else -1)] + want[t]
    got = x.clone()
    assert scan_(a, got, reverse=reverse, chunk=chunk) is got
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_large_decay_is_finite_and_exact_in_float32():
    # exp(delta * A) underflows to 0 here: the scan must stay finite (no division by
    # cumulative products, no exp of large positive numbers)
    inputs = make_inputs(64, seed=11)
    inputs["delta"] = inputs["delta"].abs() * 100.0
    inputs["A"] = inputs["A"] * 50.0
    opts = OPTIONS[1]
    got = run(selective_scan, {k: v.float() for k, v in inputs.items()}, opts)
    want = run(selective_scan_ref, inputs, opts)
    for t in [*got[0], *got[1].values()]:
        assert torch.isfinite(t).all()
    torch.testing.assert_close(got[0][0], want[0][0].float(), rtol=1e-4, atol=1e-4)


def test_output_keeps_input_dtype_and_scans_in_float32():
    x = make_inputs(5, dtype=torch.float32)
    y = selective_scan(*(x[k].bfloat16() for k in ("u", "delta", "A", "B", "C")))
    assert y.dtype == torch.bfloat16
    ref = selective_scan_ref(*(x[k].bfloat16() for k in ("u", "delta", "A", "B", "C")))
    torch.testing.assert_close(y, ref)


@pytest.mark.parametrize("bad,cut", [("A", lambda t: t[:-1]), ("B", lambda t: t[..., :-1]),
                                     ("C", lambda t: t[:, :-1]), ("delta", lambda t: t[0])])
def test_shape_errors(bad, cut):
    x = make_inputs(5)
    x[bad] = cut(x[bad])
    with pytest.raises(ValueError, match=bad):
        selective_scan(*(x[k] for k in ("u", "delta", "A", "B", "C")))
