"""Perception metrics: LPIPS and FID/KID agree with direct calls of their packages on the same
weights, and a missing backbone gives one message and null, never a number.

No pretrained weights can be downloaded here, so the tests construct them: a randomly
initialised torchvision AlexNet saved under the file name torchvision caches, and a small
feature extractor registered with torch-fidelity.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

import cascade.metrics as M
from cascade.data.datasets import resolve_dataset
from cascade.errors import CascadeError
from cascade.metrics import METRICS, perceptual
from cascade.metrics.fidelity import uint8_values as quantize
from cascade.metrics.perceptual import PatchDataset, lpips, lpips_map, patches, set_scores

TINY_FE = "cascade-test-features"


class TinyFeatures(FeatureExtractorBase):
    """A fixed random conv net: 16 pooled features of uint8 images (stands in for InceptionV3)."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        gen = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(16, 3, 5, 5, generator=gen) * 0.2)

    @staticmethod
    def get_provided_features_list():
        return ("16",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "16"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return None

    def forward(self, x):
        h = F.conv2d(x.float() / 255.0, self.weight, stride=2).relu()
        return (h.mean(dim=(2, 3)),)


if TINY_FE not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(TINY_FE, TinyFeatures)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch hub, no network, and a fresh record of what was reported."""
    calls = []

    def no_network(url, dest):
        calls.append(url)
        raise OSError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(perceptual, "_fetch", no_network)
    monkeypatch.setattr(perceptual, "_reported", set())
    monkeypatch.setattr(perceptual, "_fetch_failed", set())
    return calls


@pytest.fixture(scope="module")
def alexnet_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds a (random) AlexNet under torchvision's file name."""
    import torchvision

    home = tmp_path_factory.mktemp("torch")
    dest = home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    dest.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), dest)
    return home


def _pair(size=64, batch=2):
    gen = torch.Generator().manual_seed(1)
    hr = quantize(torch.rand(batch, 3, size, size, generator=gen)).float() / 255
    sr = quantize(hr + 0.1 * torch.randn(hr.shape, generator=gen)).float() / 255
    return sr, hr


def test_lpips_equals_the_lpips_package(alexnet_home, monkeypatch):
    import lpips as lpips_pkg

    monkeypatch.setenv("TORCH_HOME", str(alexnet_home))
    sr, hr = _pair()
    ours = lpips(sr, hr)
    assert ours.shape == (2,) and ours.dtype == torch.float64
    with torch.no_grad():  # the package itself: torchvision reads the same cached AlexNet
        ref = lpips_pkg.LPIPS(net="alex", verbose=False)(sr * 2 - 1, hr * 2 - 1).flatten()
        ref_map = lpips_pkg.LPIPS(net="alex", spatial=True, verbose=False)(sr * 2 - 1, hr * 2 - 1)
    torch.testing.assert_close(ours, ref.double(), rtol=1e-5, atol=1e-6)
    assert (ours > 0).all() and lpips(hr, hr).abs().max() < 1e-6
    m = lpips_map(sr, hr)
    assert m.shape == (2, 1, 64, 64)
    torch.testing.assert_close(m, ref_map.double(), rtol=1e-5, atol=1e-6)
    assert METRICS.get("lpips") is lpips is M.lpips


def test_lpips_reads_an_explicit_weights_file(alexnet_home, offline):
    sr, hr = _pair(batch=1)
    file = alexnet_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert lpips(sr, hr, weights=str(file)).shape == (1,)
    assert offline == []  # a given file is never fetched
    with pytest.raises(CascadeError, match="--lpips-weights"):
        lpips(sr, hr, weights=str(file.parent / "nope.pth"))


def test_lpips_rejects_a_file_that_is_not_alexnet(tmp_path, offline):
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    sr, hr = _pair(batch=1)
    with pytest.raises(CascadeError, match="not torchvision's alex"):
        lpips(sr, hr, weights=str(bad))
    with pytest.raises(CascadeError, match="unknown net"):
        lpips(sr, hr, net="resnet")


def test_missing_weights_give_one_message_and_null(offline, capsys, tmp_path):
    sr, hr = _pair(batch=1)
    assert lpips(sr, hr) is None and lpips(sr, hr) is None and lpips_map(sr, hr) is None
    assert lpips(sr, hr, net="vgg") is None
    p = patches([sr[0], hr[0]], 16)
    out = set_scores(p, p)
    assert out["fid"] is None and out["kid"] is None and out["patches"] == len(p)
    set_scores(p, p, ["kid"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3, err  # alexnet, vgg16, inception: each said once
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    assert "alexnet-owt-7be5be79.pth" in err[0] and str(hub / "alexnet-owt-7be5be79.pth") in err[0]
    assert "--lpips-weights" in err[0] and "n/a" in err[0]
    assert "vgg16-397923af.pth" in err[1]
    assert "weights-inception-2015-12-05-6726825d.pth" in err[2] and "--inception-weights" in err[2]
    assert len(offline) == 3  # each file was tried once, not on every call


def test_patches_are_a_grid_at_the_same_places():
    img = torch.rand(3, 70, 100)
    p = patches([img, img[None]], size=32)
    assert p.dtype == torch.uint8 and p.shape == (12, 3, 32, 32)  # 2 x (2 rows x 3 columns)
    q = quantize(img).to(torch.uint8)
    assert torch.equal(p[0], q[:, :32, :32]) and torch.equal(p[5], q[:, 32:64, 64:96])
    assert torch.equal(p[:6], p[6:])


def _photo_patches(size=24):
    ds = resolve_dataset("builtin")
    hr = [ds[i]["image"][:, 100:196, 100:220] for i in range(2)]  # 2 x (4 x 5) patches
    blurred = [F.avg_pool2d(x[None], 3, 1, 1)[0] for x in hr]
    return patches(blurred, size), patches(hr, size)


def test_fid_kid_equal_torch_fidelity_on_the_same_features():
    sr_p, hr_p = _photo_patches()
    n = len(sr_p)
    assert n == 40
    ours = set_scores(sr_p, hr_p, extractor=TINY_FE)
    ref = torch_fidelity.calculate_metrics(
        input1=PatchDataset(sr_p), input2=PatchDataset(hr_p), fid=True, kid=True,
        feature_extractor=TINY_FE, kid_subset_size=n, cuda=False, verbose=False,
        save_cpu_ram=True, cache=False)
    assert ours["patches"] == n and ours["kid_subset"] == n  # subset fitted to 40 patches
    assert ours["fid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-9)
    assert ours["kid"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-9)
    assert ours["kid_std"] == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-9)
    assert ours["fid"] > 0
    # The reference set's features, computed once, give the same figures.
    f_hr = perceptual.features(hr_p, extractor=TINY_FE)
    again = set_scores(sr_p, hr_p, hr_features=f_hr, extractor=TINY_FE)
    assert again["fid"] == ours["fid"] and again["kid"] == ours["kid"]


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_blur():
    sr_p, hr_p = _photo_patches()
    same = set_scores(hr_p, hr_p, ["fid"], extractor=TINY_FE)
    assert abs(same["fid"]) < 1e-6 and "kid" not in same
    ds = resolve_dataset("builtin")
    hr = [ds[i]["image"][:, 100:196, 100:220] for i in range(2)]
    fids = [set_scores(patches([F.avg_pool2d(x[None], k, 1, k // 2)[0] for x in hr], 24), hr_p,
                       ["fid"], extractor=TINY_FE)["fid"] for k in (3, 7)]
    assert 0 < fids[0] < fids[1]
    with pytest.raises(CascadeError, match="set metric"):
        set_scores(hr_p, hr_p, ["lpips"])
