"""Module / Sequential, the network layers, state_dict and .npz, BatchNorm folding and
fused epilogues, collect_shapes (engine.nn.module, engine.nn.layers, engine.nn.fusion,
engine.nn.models, tuner.model_shapes); no PyTorch needed except where a test imports it."""
from collections import OrderedDict

import numpy as np
import pytest

import engine
from engine import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, Identity, Linear,
                    MaxPool2d, Module, ReLU, Sequential)
from engine.nn.fusion import fold_batchnorm
from tuner.model_shapes import collect_shapes


def rand(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def random_bn(c, seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    bn = BatchNorm2d(c, dtype=dtype)
    bn.load_state_dict({"weight": rng.uniform(0.5, 1.5, c), "bias": rng.uniform(-0.5, 0.5, c),
                        "running_mean": rng.uniform(-0.1, 0.1, c),
                        "running_var": rng.uniform(0.5, 1.5, c), "num_batches_tracked": np.array(3)})
    return bn


class Net(Module):
    def __init__(self):
        super().__init__()
        self.conv = Conv2d(3, 4, 3, padding=1, seed=0)
        self.bn = BatchNorm2d(4)
        self.head = Sequential(Flatten(), Linear(4 * 6 * 6, 5, seed=1))

    def forward(self, x):
        return self.head(self.bn(self.conv(x)))


# ----------------------------------------------------------------- module tree
def test_registration_and_walking():
    net = Net()
    assert [n for n, _ in net.named_children()] == ["conv", "bn", "head"]
    assert [n for n, _ in net.named_modules()] == ["", "conv", "bn", "head", "head.0", "head.1"]
    assert len(list(net.modules())) == 6 and net.get_submodule("head.1") is net.head[1]
    net.bn = None                        # a non-Module over a child unregisters it
    assert [n for n, _ in net.named_children()] == ["conv", "head"]
    assert net.eval() is net and not any(m.training for m in net.modules())
    assert all(m.training for m in net.train().modules())
    assert "(head): Sequential" in repr(net) and "(1): Linear(in_features=144" in repr(net)


def test_sequential_container():
    seq = Sequential(Conv2d(3, 4, 3, seed=0), ReLU(), MaxPool2d(2))
    assert len(seq) == 3 and isinstance(seq[1], ReLU) and isinstance(seq[-1], MaxPool2d)
    sub = seq[:2]
    assert isinstance(sub, Sequential) and list(sub.state_dict()) == ["0.weight", "0.bias"]
    seq.append(Flatten())
    assert [n for n, _ in seq.named_children()] == ["0", "1", "2", "3"]
    named = Sequential(OrderedDict(conv=Conv2d(3, 2, 1, seed=0), act=ReLU()))
    assert list(named.state_dict()) == ["conv.weight", "conv.bias"]
    x = rand(2, 3, 8, 8)
    np.testing.assert_array_equal(seq(x), seq[3](seq[2](seq[1](seq[0](x)))))
    with pytest.raises(IndexError):
        seq[7]
    with pytest.raises(TypeError):
        seq["0"]


def test_forward_hooks():
    seq = Sequential(ReLU(), Flatten())
    seen = []
    h = seq[0].register_forward_hook(lambda m, args, out: seen.append(out.shape))
    p = seq[1].register_forward_pre_hook(lambda m, args: seen.append("pre"))
    seq(rand(1, 2, 3, 3))
    h.remove()
    p.remove()
    seq(rand(1, 2, 3, 3))
    assert seen == [(1, 2, 3, 3), "pre"]


# ---------------------------------------------------------------------- layers
def test_small_layers():
    x = rand(2, 3, 5, 5)
    np.testing.assert_array_equal(ReLU()(x), np.maximum(x, 0))
    assert np.isnan(ReLU()(np.array([np.nan], np.float32)))[0]
    assert Dropout(0.3)(x) is x and Identity()(x) is x
    assert Flatten()(x).shape == (2, 75) and Flatten(0, 1)(x).shape == (6, 5, 5)
    lin = Linear(75, 4, seed=0)
    np.testing.assert_allclose(lin(Flatten()(x)), Flatten()(x) @ lin.weight.T + lin.bias, rtol=1e-5)
    with pytest.raises(ValueError, match="last dimension is 75"):
        lin(x)
    with pytest.raises(TypeError, match="dtype"):
        lin(Flatten()(x).astype(np.float64))
    with pytest.raises(ValueError):
        Dropout(1.5)
    assert not lin.weight.flags.writeable


@pytest.mark.parametrize("size,out", [((8, 8), (1, 1)), ((8, 12), (2, 3)), ((1, 1), (7, 7)),
                                      ((10, 9), (3, 4)), ((5, 6), (None, 2))])
def test_adaptive_avg_pool_matches_definition(size, out):
    x = rand(2, 3, *size)
    y = AdaptiveAvgPool2d(out)(x)
    oh = size[0] if out[0] is None else out[0]
    ow = size[1] if out[1] is None else out[1]
    assert y.shape == (2, 3, oh, ow)
    for i in range(oh):
        for j in range(ow):
            h0, h1 = i * size[0] // oh, -(-(i + 1) * size[0] // oh)
            w0, w1 = j * size[1] // ow, -(-(j + 1) * size[1] // ow)
            np.testing.assert_allclose(y[:, :, i, j], x[:, :, h0:h1, w0:w1].mean(axis=(2, 3)),
                                       rtol=1e-5, atol=1e-6)


def test_layers_match_torch():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    x = rand(2, 6, 9, 10)
    tx = torch.from_numpy(x)
    bn_t = nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        bn_t.running_mean.uniform_(-1, 1)
        bn_t.running_var.uniform_(0.5, 2)
        bn_t.weight.uniform_(0.5, 1.5)
        bn_t.bias.uniform_(-1, 1)
    for t, e in [(bn_t, engine.from_torch(bn_t)),
                 (nn.BatchNorm2d(6, affine=False, track_running_stats=False).eval(),
                  BatchNorm2d(6, affine=False, track_running_stats=False)),
                 (nn.AdaptiveAvgPool2d((4, 3)), AdaptiveAvgPool2d((4, 3))),
                 (nn.AdaptiveAvgPool2d(1), AdaptiveAvgPool2d(1))]:
        with torch.no_grad():
            np.testing.assert_allclose(e(x), t(tx).numpy(), rtol=1e-5, atol=1e-5)
    lin_t = nn.Linear(10, 7)
    with torch.no_grad():
        np.testing.assert_allclose(engine.from_torch(lin_t)(x), lin_t(tx).numpy(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ state dict
def test_state_dict_keys_and_round_trip(tmp_path):
    net = Net()
    assert list(net.state_dict()) == [
        "conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
        "bn.num_batches_tracked", "head.1.weight", "head.1.bias"]
    assert net.state_dict()["bn.num_batches_tracked"].dtype == np.int64
    other = Net()
    other.conv.weight = rand(4, 3, 3, 3, seed=5)
    x = rand(1, 3, 6, 6)
    before = other(x)                         # caches prepared weights for this shape
    path = tmp_path / "net.npz"
    net.save_npz(path)
    assert other.load_npz(path) is other
    np.testing.assert_array_equal(other(x), net(x))
    assert not np.array_equal(before, other(x))
    assert not other.conv.weight.flags.writeable
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)


def test_load_state_dict_errors():
    net = Net()
    good = {k: np.array(v) for k, v in net.state_dict().items()}
    snapshot = np.array(net.conv.weight)

    bad = dict(good, **{"conv.weight": np.zeros((4, 3, 5, 5), np.float32)})
    bad.pop("bn.bias")
    bad["head.2.weight"] = np.zeros(3)
    with pytest.raises(ValueError) as e:
        net.load_state_dict(bad)
    msg = str(e.value)
    assert "conv.weight: expected shape (4, 3, 3, 3), got (4, 3, 5, 5)" in msg
    assert "missing keys: bn.bias" in msg and "unexpected keys: head.2.weight" in msg
    np.testing.assert_array_equal(net.conv.weight, snapshot)       # nothing was loaded

    partial = dict(good)
    partial.pop("bn.bias")
    partial["extra"] = np.zeros(1)
    partial["conv.weight"] = np.ones((4, 3, 3, 3))
    missing, unexpected = net.load_state_dict(partial, strict=False)
    assert missing == ["bn.bias"] and unexpected == ["extra"]
    np.testing.assert_array_equal(net.conv.weight, 1)
    with pytest.raises(ValueError, match="size mismatch"):
        net.load_state_dict({"bn.weight": np.ones(5)}, strict=False)
    with pytest.raises(TypeError):
        net.load_state_dict([1, 2])
    no_bias = Conv2d(3, 4, 3, bias=False)
    with pytest.raises(ValueError, match="unexpected keys: bias"):
        no_bias.load_state_dict({"weight": np.ones((4, 3, 3, 3)), "bias": np.ones(4)})


# ---------------------------------------------------------------------- fusion
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fold_batchnorm_is_exact_math(bias, dtype):
    conv = Conv2d(5, 6, 3, padding=1, bias=bias, dtype=dtype, seed=2, algorithm="direct")
    bn = random_bn(6, dtype=dtype)
    x = rand(2, 5, 7, 7, dtype=dtype)
    expected = bn(conv(x))
    folded = fold_batchnorm(conv, bn)
    assert folded is conv and conv.bias is not None
    np.testing.assert_allclose(conv(x), expected, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-5 if dtype == np.float32 else 1e-12)


def test_fold_batchnorm_refuses():
    with pytest.raises(ValueError, match="running statistics"):
        fold_batchnorm(Conv2d(3, 4, 1), BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="4 features"):
        fold_batchnorm(Conv2d(3, 5, 1), BatchNorm2d(4))
    with pytest.raises(TypeError):
        fold_batchnorm(Conv2d(3, 4, 1), ReLU())


@pytest.mark.parametrize("algorithm", engine.algorithms())
def test_fused_epilogue_every_algorithm(algorithm):
    """Conv-BN-ReLU fused into one convolution whose kernel adds the bias and clamps."""
    model = Sequential(Conv2d(16, 16, 3, padding=1, seed=3, algorithm=algorithm), random_bn(16),
                       ReLU(), Dropout(), Conv2d(16, 8, 3, padding=1, seed=4, algorithm=algorithm),
                       ReLU(), MaxPool2d(2))
    x = rand(2, 16, 16, 16)
    fused = engine.fuse(model)
    assert isinstance(fused[1], Identity) and isinstance(fused[2], Identity)
    assert isinstance(fused[5], Identity) and fused[0].fused_relu and fused[4].fused_relu
    assert not model[0].fused_relu and isinstance(model[1], BatchNorm2d)   # original untouched
    ref, out = model(x), fused(x)
    tol = engine.registry.tolerance(algorithm, np.float32) * 10
    assert np.abs(out - ref).max() <= tol * max(1.0, np.abs(ref).max())
    assert out.min() >= 0
    assert list(fused.state_dict()) == ["0.weight", "0.bias", "4.weight", "4.bias"]


def test_relu_fusion_is_bitwise_and_fuse_is_idempotent():
    model = Sequential(Conv2d(8, 8, 3, padding=1, seed=5), ReLU())
    x = rand(1, 8, 20, 20)
    fused = engine.fuse(model)
    np.testing.assert_array_equal(fused(x), model(x))     # same kernel, clamp in its store
    again = engine.fuse(fused)
    np.testing.assert_array_equal(again(x), fused(x))
    same = engine.fuse(model, inplace=True)
    assert same is model and model[0].fused_relu and "fused_relu=True" in repr(model[0])


def test_unfoldable_batchnorm_is_left_alone():
    model = Sequential(Conv2d(3, 4, 3, seed=0), BatchNorm2d(4, track_running_stats=False), ReLU())
    fused = engine.fuse(model)
    assert isinstance(fused[1], BatchNorm2d) and isinstance(fused[2], ReLU)
    assert not fused[0].fused_relu
    x = rand(2, 3, 6, 6)
    np.testing.assert_array_equal(fused(x), model(x))


# ------------------------------------------------------------- collect_shapes
def test_collect_shapes_resnet18():
    shapes = collect_shapes(engine.models.resnet18, (1, 3, 224, 224))
    convs = [s for s in shapes if s["op"] == "conv2d"]
    pools = [s for s in shapes if s["op"] != "conv2d"]
    # conv1; 3x3 at 56/28/14/7 (same-size and strided); 1x1 strided downsamples
    assert len(convs) == 11 and len(shapes) == len({str(sorted(s.items())) for s in shapes})
    assert convs[0] == engine.shapes.conv_params((1, 3, 224, 224), (64, 3, 7, 7), 2, 3, 1, 1,
                                                 "zeros", "float32").key()
    assert [p["op"] for p in pools] == ["max_pool2d", "avg_pool2d"]
    assert pools[0]["H"] == 112 and pools[1]["kernel"] == [7, 7]
    details = collect_shapes("engine.models:resnet18", (1, 3, 224, 224), details=True)
    assert [d["params"].key() for d in details] == [d["key"] for d in details] == shapes
    assert details[0]["names"] == ["conv1"] and details[0]["bias"] is False
    assert "layer1.0.conv1" in details[2]["names"] and len(details[2]["names"]) == 4
    with pytest.raises(ValueError, match="package.module:function"):
        collect_shapes("resnet18", (1, 3, 32, 32))
    m = engine.models.mobilenet_v1(num_classes=10)
    dw = [s for s in collect_shapes(m, (2, 3, 64, 64)) if s["op"] == "conv2d" and s["groups"] > 1]
    assert all(s["groups"] == s["C"] and s["N"] == 2 for s in dw) and len(dw) == 9
