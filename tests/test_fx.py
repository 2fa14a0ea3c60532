"""engine.from_torch through torch.fx tracing, and torch.onnx.export -> engine.from_onnx,
on a small hand-built module of each CNN family (tests/cnn_families.py), against
PyTorch itself; fused and unfused graphs agree; the errors for what cannot be traced."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the fx conversion tests need PyTorch")

import engine  # noqa: E402
from engine.nn.graph import Graph  # noqa: E402

from cnn_families import FAMILIES, build  # noqa: E402
from tuner.model_shapes import collect_shapes  # noqa: E402

TOL = 1e-5      # relative to max|output|: float32 sums in another order


def torch_out(m, x):
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()


def assert_close(out, ref, tol=TOL):
    assert out.shape == ref.shape
    err = np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30)
    assert err < tol, f"max error {err:.2e} relative to max|output| {np.abs(ref).max():.3g}"


def inputs(size, batch):
    return np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)


def assert_graph_matches(g, m, size):
    """``g`` and its fused copy compute what torch module ``m`` does, at batch 1 and 2."""
    fused = engine.fuse(g)
    for batch in (1, 2):
        x = inputs(size, batch)
        ref = torch_out(m, x)
        assert_close(g(x), ref)
        assert_close(fused(x), ref)


@pytest.mark.parametrize("name", FAMILIES)
def test_fx_conversion_matches_torch(name):
    m, size = build(name)
    g = engine.from_torch(m)
    assert isinstance(g, Graph)
    # The layers sit at PyTorch's module paths: the same state_dict keys.
    assert list(g.state_dict()) == list(m.state_dict())
    assert_graph_matches(g, m, size)


def test_uneven_adaptive_pool():
    """AlexNet's adaptive pool to 6x6 from a 4x4 feature map (overlapping windows)."""
    m, _ = build("alexnet")
    x = inputs(79, 2)
    assert_close(engine.from_torch(m)(x), torch_out(m, x))


def test_fusion_folds_batchnorm_and_relu():
    m, size = build("mobilenet_v2")
    g = engine.from_torch(m)
    fused = engine.fuse(g)
    ops = [n.op for n in fused.nodes]
    assert "BatchNormalization" not in ops
    convs = [l for l in fused.modules() if isinstance(l, engine.Conv2d)]
    assert len(convs) == sum(isinstance(l, torch.nn.Conv2d) for l in m.modules())
    # ReLU6 is a Clip(0, 6): it stays a node (the kernels clamp only at zero).
    assert ops.count("Clip") == sum(isinstance(l, torch.nn.ReLU6) for l in m.modules())
    g2 = engine.from_torch(build("squeezenet")[0])
    f2 = engine.fuse(g2)
    assert "Relu" not in [n.op for n in f2.nodes]
    assert all(l.fused_relu for l in f2.modules() if isinstance(l, engine.Conv2d))
    # the unfused graph is untouched by fusing a copy
    assert "BatchNormalization" in [n.op for n in g.nodes]


@pytest.mark.filterwarnings("ignore:.*legacy TorchScript-based ONNX export:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning")
@pytest.mark.parametrize("name", FAMILIES)
def test_onnx_export_matches_torch(name, tmp_path):
    pytest.importorskip("onnx", reason="needs the onnx package")
    m, size = build(name)
    path = tmp_path / f"{name}.onnx"
    x1 = inputs(size, 1)
    torch.onnx.export(m, (torch.from_numpy(x1),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    g = engine.from_onnx(str(path))
    assert_graph_matches(g, m, size)


def test_class_matched_path_is_kept():
    """torchvision-style classes the engine knows by name are still rebuilt as them."""
    from engine import models
    import torch.nn as nn

    class BasicBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(4, 4, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(4)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(4, 4, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(4)
            self.downsample = None

        def forward(self, x):
            return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)

    out = engine.from_torch(BasicBlock().eval())
    assert isinstance(out, models.BasicBlock)


def test_graph_works_with_collect_shapes_and_explain():
    m, size = build("regnet")
    g = engine.from_torch(m)
    shapes = collect_shapes(g, (1, 3, size, size))
    convs = [s for s in shapes if s["op"] == "conv2d"]
    assert {(s["C"], s["out_channels"], s["groups"]) for s in convs} == {
        (l.in_channels, l.out_channels, l.groups) for l in m.modules() if isinstance(l, torch.nn.Conv2d)}
    report = g.explain((1, 3, size, size))
    assert len(report) == sum(isinstance(l, torch.nn.Conv2d) for l in m.modules())
    assert all(r["algorithm"] in engine.algorithms() for r in report)
    assert report[0]["layer"] == "stem.0"


def test_untraceable_model_suggests_onnx():
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:        # control flow on a value: fx cannot trace it
                return x
            return -x

    with pytest.raises(TypeError, match="torch.fx cannot trace DataDependent.*torch.onnx.export"):
        engine.from_torch(DataDependent())


def test_unsupported_function_names_the_node():
    class Fancy(torch.nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 1)

    with pytest.raises(TypeError, match=r"node 'cumsum' \(call_function cumsum\): this function is "
                                        r"not supported.*engine.from_onnx"):
        engine.from_torch(Fancy())


def test_unsupported_module_names_the_node():
    class WithIndices(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = torch.nn.MaxPool2d(2, return_indices=True)

        def forward(self, x):
            return self.pool(x)[0]

    with pytest.raises(TypeError, match=r"node 'pool' \(call_module pool\): MaxPool2d\(return_indices=True\) is not supported"):
        engine.from_torch(WithIndices())


def test_float64_model():
    m, size = build("shufflenet")
    m = m.double()
    g = engine.from_torch(m)
    x = inputs(size, 2).astype(np.float64)
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    assert_close(g(x), ref, 1e-12)


def _torchvision():
    try:
        import torchvision
    except Exception as e:   # absent, or built for another torch (torch 2.13 has none)
        pytest.skip(f"torchvision is not importable beside torch {torch.__version__} ({e}); "
                    f"`pip install torch==2.14.1 torchvision==0.29.1` gives a matching pair")
    return torchvision


TORCHVISION = ["resnet18", "resnet50", "vgg16_bn", "resnext50_32x4d", "wide_resnet50_2",
               "mobilenet_v2", "mobilenet_v3_small", "squeezenet1_1", "googlenet", "densenet121",
               "shufflenet_v2_x1_0", "efficientnet_b0", "regnet_y_400mf", "mnasnet0_5", "alexnet"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_architecture(name):
    """The real torchvision model (random weights and BatchNorm statistics, eval mode)
    through from_torch (class-matched or traced), fused, at batch 1 and 2; 96x96 keeps
    the suite fast (benchmarks/bench_torchvision.py runs them at 224x224)."""
    tv = _torchvision()
    torch.manual_seed(0)
    kwargs = {"init_weights": True} if name == "googlenet" else {}
    m = getattr(tv.models, name)(weights=None, **kwargs).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.8, 1.2)
    g = engine.fuse(engine.from_torch(m))
    for batch in (1, 2):
        x = inputs(96, batch)
        assert_close(g(x), torch_out(m, x), 1e-4)


def test_uneven_split_and_chunk():
    """torch.split into unequal parts and a chunk whose last piece is smaller."""
    class Parts(torch.nn.Module):
        def forward(self, x):
            a, b = torch.split(x, [1, 4], 1)
            c, d, e = x.chunk(3, dim=1)          # 5 channels: 2, 2, 1
            return torch.cat([b, a, e * 2, d, c], 1)

    m = Parts()
    x = inputs(4, 2)[:, :1].repeat(5, axis=1) * np.arange(1, 6, dtype=np.float32)[None, :, None, None]
    assert_close(engine.from_torch(m)(x), torch_out(m, x))


def test_stored_tensors_keep_their_state_dict_names():
    """Parameters a forward uses directly (not through a layer) are the graph's state
    under PyTorch's names: a LayerNorm traced through F.layer_norm, a learned scale."""
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.gamma = torch.nn.Parameter(torch.linspace(0.5, 2, 4).reshape(1, 4, 1, 1))

        def forward(self, x):
            y = self.conv(x) * self.gamma
            return torch.nn.functional.layer_norm(y, (4, 4, 4))

    m = Scaled().eval()
    g = engine.from_torch(m)
    assert set(g.state_dict()) == {"conv.weight", "conv.bias", "gamma"}
    x = inputs(4, 2)
    assert_close(g(x), torch_out(m, x))
    sd = {k: np.array(v) for k, v in g.state_dict().items()}
    sd["gamma"] = sd["gamma"] * 3
    g.load_state_dict(sd)
    with torch.no_grad():
        m.gamma.mul_(3)
    assert_close(g(x), torch_out(m, x))


def test_functional_dropout_without_training_false_is_refused():
    class Drops(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.dropout(x, 0.5)     # training=True by default

    with pytest.raises(TypeError, match="dropout in training mode"):
        engine.from_torch(Drops())
