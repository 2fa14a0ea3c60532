"""Whole networks against the same networks in PyTorch: the seed CNN, VGG-16, ResNet-18,
ResNet-50, MobileNet-V1 (engine.models, engine.from_torch, engine.fuse). The PyTorch
networks are built by hand with torchvision's structure and key names
(tests/torch_reference.py)."""
import copy

import numpy as np
import pytest

import engine
from engine import models

torch = pytest.importorskip("torch")
import torch_reference as ref  # noqa: E402
from reference import max_rel_error as ref_max_rel_error  # noqa: E402

# Whole-network error bound relative to max(1, max|ref|): float32 networks run
# Winograd layers (F(4x4): 2e-5 each, engine.registry.TOLERANCE) through up to 16 layers.
TOL = {np.float32: 2e-3, np.float64: 1e-9}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def torch_out(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def assert_close(out, expected, dtype):
    assert out.shape == expected.shape and out.dtype == expected.dtype
    err = ref_max_rel_error(out, expected)
    assert err <= TOL[dtype], f"relative error {err:.3g} > {TOL[dtype]}"


def image(n, size, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(dtype)


def build_torch(name, seed=0, **kw):
    torch.manual_seed(seed)
    return ref.randomize_bn(ref.BUILDERS[name](**kw)).eval()


# ------------------------------------------------------------------- parity
@pytest.mark.parametrize("batch", [1, 2])
def test_seed_cnn(batch):
    tm = build_torch("seed_cnn")
    em = engine.from_torch(tm)
    assert isinstance(em, engine.Sequential) and len(em) == 6
    x = image(batch, 32)
    expected = torch_out(tm, x)
    assert_close(em(x), expected, np.float32)
    fused = engine.fuse(em)
    assert fused[0].fused_relu and isinstance(fused[1], engine.Identity)
    assert_close(fused(x), expected, np.float32)


@pytest.fixture(scope="module")
def resnet18_pair():
    tm = build_torch("resnet18", num_classes=10)
    em = models.resnet18(num_classes=10)
    em.load_state_dict(tm.state_dict())
    return tm, em


@pytest.mark.parametrize("batch", [1, 2])
def test_resnet18(resnet18_pair, batch):
    tm, em = resnet18_pair
    x = image(batch, 64, seed=batch)
    expected = torch_out(tm, x)
    assert_close(em(x), expected, np.float32)
    assert_close(engine.fuse(em)(x), expected, np.float32)


def test_resnet18_float64_is_tight(resnet18_pair):
    tm64 = copy.deepcopy(resnet18_pair[0]).double()
    em = engine.from_torch(tm64)
    assert em.conv1.dtype == np.float64
    x = image(1, 48, np.float64)
    expected = torch_out(tm64, x)
    assert_close(em(x), expected, np.float64)
    assert_close(engine.fuse(em)(x), expected, np.float64)


@pytest.fixture(scope="module")
def vgg16_torch():
    return build_torch("vgg16", num_classes=10)


def test_vgg16(vgg16_torch):
    """32x32 input goes through AdaptiveAvgPool2d((7, 7)) from 1x1; batch 1 and 2,
    unfused and fused (VGG-16's 138M parameters: one conversion, fused in place)."""
    em = engine.from_torch(vgg16_torch)
    assert type(em) is models.VGG
    x1, x2 = image(1, 32, seed=1), image(2, 32, seed=2)
    e1, e2 = torch_out(vgg16_torch, x1), torch_out(vgg16_torch, x2)
    assert_close(em(x1), e1, np.float32)
    engine.fuse(em, inplace=True)
    assert em.features[0].fused_relu and isinstance(em.features[1], engine.Identity)
    assert_close(em(x1), e1, np.float32)
    assert_close(em(x2), e2, np.float32)


def test_vgg16_builder_keys(vgg16_torch):
    """torchvision's VGG-16 state_dict loads into engine.models.vgg16 as it is."""
    em = models.vgg16(num_classes=10)
    sd = vgg16_torch.state_dict()
    assert list(em.state_dict()) == list(sd)
    assert list(em.state_dict())[:2] == ["features.0.weight", "features.0.bias"]
    assert "classifier.6.bias" in em.state_dict()
    em.load_state_dict(sd)
    np.testing.assert_array_equal(em.classifier[6].bias, sd["classifier.6.bias"].numpy())


@pytest.mark.parametrize("batch", [1, 2])
def test_mobilenet_v1(batch):
    tm = build_torch("mobilenet_v1", num_classes=10)
    em = models.mobilenet_v1(num_classes=10)
    assert list(em.state_dict()) == list(tm.state_dict())
    em.load_state_dict(tm.state_dict())
    x = image(batch, 64, seed=batch)
    expected = torch_out(tm, x)
    assert_close(em(x), expected, np.float32)
    fused = engine.fuse(em)
    assert all(c.fused_relu for c in fused.modules() if isinstance(c, engine.Conv2d))
    assert not any(isinstance(c, engine.BatchNorm2d) for c in fused.modules())
    assert_close(fused(x), expected, np.float32)


def test_resnet50():
    tm = build_torch("resnet50", num_classes=10)
    em = engine.from_torch(tm)
    assert type(em.layer1[0]) is models.Bottleneck
    assert list(em.state_dict()) == list(models.resnet50(num_classes=10).state_dict())
    x = image(1, 32)
    assert_close(engine.fuse(em)(x), torch_out(tm, x), np.float32)


# ----------------------------------------------------------------- from_torch
def test_from_torch_round_trip_and_npz(resnet18_pair, tmp_path):
    tm, _ = resnet18_pair
    em = engine.from_torch(tm)
    assert type(em) is models.ResNet and type(em.layer2[0]) is models.BasicBlock
    assert em.layer1[0].downsample is None and isinstance(em.layer2[0].downsample, engine.Sequential)
    sd = tm.state_dict()
    assert list(em.state_dict()) == list(sd)
    for k, v in em.state_dict().items():
        np.testing.assert_array_equal(v, sd[k].numpy())
    # torchvision weights saved as .npz load straight into the zoo model
    path = tmp_path / "resnet18.npz"
    np.savez(path, **{k: v.numpy() for k, v in sd.items()})
    zoo = models.resnet18(num_classes=10).load_npz(path)
    x = image(1, 32)
    np.testing.assert_array_equal(zoo(x), em(x))
    # and engine -> .npz -> engine
    em.save_npz(tmp_path / "again.npz")
    np.testing.assert_array_equal(models.resnet18(num_classes=10).load_npz(tmp_path / "again.npz")(x), em(x))


def test_from_torch_structures():
    nn = torch.nn

    class Wrapper(nn.Sequential):       # forward is Sequential's: converted with its names
        pass

    tm = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3, padding="same", padding_mode="reflect"),
                                     nn.BatchNorm2d(4), nn.ReLU()),
                       Wrapper(nn.AvgPool2d(2, ceil_mode=True), nn.Identity()),
                       nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, 3))
    ref.randomize_bn(tm).eval()
    em = engine.from_torch(tm)
    assert list(em.state_dict()) == list(tm.state_dict())
    assert em[0][0].padding == "same" and em[0][0].padding_mode == "reflect"
    x = image(2, 9)
    assert_close(em(x), torch_out(tm, x), np.float32)


def test_from_torch_traces_what_it_does_not_rebuild_by_name():
    """Modules outside the class-matched set (GELU, a custom forward, a Conv2d subclass
    with its own forward) go through torch.fx into an engine Graph (tests/test_fx.py
    covers that path); the result computes what PyTorch does."""
    nn = torch.nn

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(x) * 2

    class MyConv(nn.Conv2d):            # a subclass with its own forward is not a Conv2d
        def forward(self, x):
            return super().forward(x) + 1

    x = image(2, 9)
    for tm in (nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sequential(nn.ReLU(), nn.ReLU(), nn.GELU())),
               nn.Sequential(Custom()), MyConv(3, 3, 1)):
        em = engine.from_torch(tm.eval())
        assert isinstance(em, engine.Graph)
        if not isinstance(tm, MyConv):  # (the root's own conv becomes a child layer "_conv2d")
            assert list(em.state_dict()) == list(tm.state_dict())
        assert_close(em(x), torch_out(tm, x), np.float32)


def test_from_torch_errors():
    nn = torch.nn

    class BasicBlock(nn.Module):        # right name, wrong structure, and no forward to trace
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 3, 1)

    with pytest.raises(TypeError, match="BasicBlock"):
        engine.from_torch(BasicBlock())
    with pytest.raises(TypeError, match="torch.nn.Module"):
        engine.from_torch(engine.ReLU())
