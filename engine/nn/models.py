"""A model zoo on engine layers.

VGG and ResNet follow torchvision's architectures and state_dict key names exactly,
so torchvision weights saved as ``.npz`` load directly::

    # with PyTorch, once:
    numpy.savez("resnet18.npz", **{k: v.numpy() for k, v in tv_model.state_dict().items()})
    # then, without PyTorch:
    model = engine.models.resnet18().load_npz("resnet18.npz")
    fast = engine.fuse(model)            # BatchNorm folded, ReLU in the kernels

- ``vgg16()`` (and ``vgg16_bn()``): ``features.{i}.weight|bias`` (conv i at torchvision's
  index), ``classifier.{0,3,6}.weight|bias``; avgpool is AdaptiveAvgPool2d((7, 7)).
- ``resnet18()``, ``resnet34()`` (BasicBlock), ``resnet50()`` (Bottleneck, v1.5: the
  stride on the 3x3): ``conv1``, ``bn1``, ``layer{1-4}.{b}.conv{k}|bn{k}``,
  ``layer{l}.0.downsample.0|1``, ``fc``.
- ``mobilenet_v1()``: the standard MobileNet-V1 (Howard et al. 2017), a stride-2 3x3
  convolution to 32 channels then 13 depthwise-separable blocks. Keys:
  ``features.0.0`` (conv 3x3, 3->32, stride 2), ``features.0.1`` (its BatchNorm);
  for block k = 1..13, ``features.{k}.0`` (depthwise 3x3), ``features.{k}.1`` (BN),
  ``features.{k}.3`` (pointwise 1x1), ``features.{k}.4`` (BN); then ``fc``
  (Linear 1024 -> num_classes) after a global average pool. No conv has a bias.

Every builder takes ``num_classes``, ``dtype`` and ``seed`` (an int or numpy Generator;
default: ``engine.manual_seed``'s generator). Parameters start with the variances
torchvision gives them (``init_like_torchvision``): Kaiming for convolutions (ReLU gain),
zero conv biases, BatchNorm weight 1, bias 0 and identity running statistics, so random
networks keep their activations near unit scale (no vanishing into denormals).
"""
import numpy as np

from ..operator import add_relu_
from .fusion import fuse_conv
from .layers import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Dropout, Linear, MaxPool2d,
                     ReLU, _rng)
from .module import Module, Sequential

__all__ = ["VGG", "ResNet", "BasicBlock", "Bottleneck", "MobileNetV1", "vgg16", "vgg16_bn",
           "resnet18", "resnet34", "resnet50", "mobilenet_v1", "init_like_torchvision"]


def _conv_bn_relu(x, conv, bn, relu):
    """relu(bn(conv(x))); once fused, bn is an Identity and conv applies the relu."""
    out = bn(conv(x))
    return out if conv.fused_relu else relu(out)


def _uniform(rng, shape, std, dtype):
    """Zero-mean uniform values with standard deviation ``std`` (uniform draws are
    several times cheaper than normal ones, and the variance is what matters here)."""
    a = rng.random(shape, dtype=np.float32)
    a -= np.float32(0.5)
    a *= np.float32(2 * np.sqrt(3.0) * std)
    return a.astype(dtype, copy=False)


def init_like_torchvision(model, seed=None, linear_std=None):
    """Initialise ``model``'s parameters in place with torchvision's variances.

    Conv2d: std sqrt(2 / fan), fan = out_channels * kH * kW (torchvision's fan_out) or,
    for grouped/depthwise convolutions, the fan-in (in_channels / groups) * kH * kW,
    which keeps depthwise activations from vanishing; bias 0. Linear: std
    ``linear_std`` and bias 0 when given (VGG uses 0.01), else left as built.
    BatchNorm2d: weight 1, bias 0. Values are variance-matched uniform draws.
    Returns ``model``.
    """
    rng = _rng(seed)
    for m in model.modules():
        if isinstance(m, Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            fan = (m.in_channels // m.groups if m.groups > 1 else m.out_channels) * k
            m.weight = _uniform(rng, m.weight.shape, np.sqrt(2.0 / fan), m.dtype)
            if m.bias is not None:
                m.bias = np.zeros_like(m.bias)
        elif isinstance(m, Linear) and linear_std is not None:
            m.weight = _uniform(rng, m.weight.shape, linear_std, m.dtype)
            if m.bias is not None:
                m.bias = np.zeros_like(m.bias)
        elif isinstance(m, BatchNorm2d) and m.affine:
            m.weight, m.bias = np.ones_like(m.weight), np.zeros_like(m.bias)
    return model


def _flatten(x):
    """x (N, ...) -> (N, prod(...)), as torch.flatten(x, 1)."""
    return x.reshape(x.shape[0], -1)


# ---------------------------------------------------------------------------- VGG
_VGG_CFG = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
}


def _vgg_features(cfg, batch_norm, dtype):
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(Conv2d(c, v, 3, padding=1, dtype=dtype, init=False))
        if batch_norm:
            layers.append(BatchNorm2d(v, dtype=dtype))
        layers.append(ReLU(inplace=True))
        c = v
    return Sequential(*layers)


class VGG(Module):
    """torchvision's VGG: ``features`` -> ``avgpool`` (AdaptiveAvgPool2d((7, 7))) ->
    flatten -> ``classifier`` (Linear 25088-4096, ReLU, Dropout, Linear 4096-4096,
    ReLU, Dropout, Linear 4096-num_classes)."""

    def __init__(self, features, num_classes=1000, dropout=0.5, *, dtype=np.float32, seed=None):
        super().__init__()
        rng = _rng(seed)
        self.features = features
        self.avgpool = AdaptiveAvgPool2d((7, 7))
        self.classifier = Sequential(
            Linear(512 * 7 * 7, 4096, dtype=dtype, init=False), ReLU(True), Dropout(dropout),
            Linear(4096, 4096, dtype=dtype, init=False), ReLU(True), Dropout(dropout),
            Linear(4096, num_classes, dtype=dtype, init=False))
        init_like_torchvision(self, rng, linear_std=0.01)

    def forward(self, x):
        """(N, 3, H, W) images -> (N, num_classes) logits."""
        return self.classifier(_flatten(self.avgpool(self.features(x))))


def vgg16(num_classes=1000, *, dtype=np.float32, seed=None):
    """VGG-16 (configuration D), torchvision's layout and key names."""
    rng = _rng(seed)
    return VGG(_vgg_features(_VGG_CFG["vgg16"], False, dtype), num_classes, dtype=dtype, seed=rng)


def vgg16_bn(num_classes=1000, *, dtype=np.float32, seed=None):
    """VGG-16 with BatchNorm after every convolution, torchvision's layout and keys."""
    rng = _rng(seed)
    return VGG(_vgg_features(_VGG_CFG["vgg16"], True, dtype), num_classes, dtype=dtype, seed=rng)


# ------------------------------------------------------------------------- ResNet
class BasicBlock(Module):
    """torchvision's ResNet BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut),
    shortcut = downsample(x) (conv 1x1 + BN) or x. ``init=False`` skips initialising
    the parameters (ResNet initialises the whole network once)."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, dtype=np.float32, seed=None,
                 init=True):
        super().__init__()
        self.conv1 = Conv2d(inplanes, planes, 3, stride, 1, bias=False, dtype=dtype, init=False)
        self.bn1 = BatchNorm2d(planes, dtype=dtype)
        self.relu = ReLU(inplace=True)
        self.conv2 = Conv2d(planes, planes, 3, 1, 1, bias=False, dtype=dtype, init=False)
        self.bn2 = BatchNorm2d(planes, dtype=dtype)
        self.downsample = downsample
        self.stride = stride
        if init:
            init_like_torchvision(self, seed)

    def forward(self, x):
        """The residual block on x (N, C, H, W)."""
        out = _conv_bn_relu(x, self.conv1, self.bn1, self.relu)
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return add_relu_(out, identity)   # in place: out is the block's own

    def _fuse(self):
        fuse_conv(self, "conv1", "bn1", relu=True)
        fuse_conv(self, "conv2", "bn2")


class Bottleneck(Module):
    """torchvision's ResNet Bottleneck (v1.5): 1x1 -> 3x3 (stride) -> 1x1 (x4 channels),
    each with BN, ReLU between, relu(... + shortcut) at the end. ``init`` as in
    BasicBlock."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, dtype=np.float32, seed=None,
                 init=True):
        super().__init__()
        width = planes
        self.conv1 = Conv2d(inplanes, width, 1, bias=False, dtype=dtype, init=False)
        self.bn1 = BatchNorm2d(width, dtype=dtype)
        self.conv2 = Conv2d(width, width, 3, stride, 1, bias=False, dtype=dtype, init=False)
        self.bn2 = BatchNorm2d(width, dtype=dtype)
        self.conv3 = Conv2d(width, planes * self.expansion, 1, bias=False, dtype=dtype, init=False)
        self.bn3 = BatchNorm2d(planes * self.expansion, dtype=dtype)
        self.relu = ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        if init:
            init_like_torchvision(self, seed)

    def forward(self, x):
        """The residual block on x (N, C, H, W)."""
        out = _conv_bn_relu(x, self.conv1, self.bn1, self.relu)
        out = _conv_bn_relu(out, self.conv2, self.bn2, self.relu)
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return add_relu_(out, identity)   # in place: out is the block's own

    def _fuse(self):
        fuse_conv(self, "conv1", "bn1", relu=True)
        fuse_conv(self, "conv2", "bn2", relu=True)
        fuse_conv(self, "conv3", "bn3")


class ResNet(Module):
    """torchvision's ResNet: conv1 7x7/2 -> bn1 -> relu -> maxpool 3x3/2 -> layer1..4
    -> avgpool (global) -> flatten -> fc."""

    def __init__(self, block, layers, num_classes=1000, *, dtype=np.float32, seed=None):
        super().__init__()
        rng = _rng(seed)
        self.inplanes = 64
        self.conv1 = Conv2d(3, 64, 7, 2, 3, bias=False, dtype=dtype, init=False)
        self.bn1 = BatchNorm2d(64, dtype=dtype)
        self.relu = ReLU(inplace=True)
        self.maxpool = MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1, dtype)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, dtype)
        self.layer3 = self._make_layer(block, 256, layers[2], 2, dtype)
        self.layer4 = self._make_layer(block, 512, layers[3], 2, dtype)
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.fc = Linear(512 * block.expansion, num_classes, dtype=dtype, seed=rng)
        init_like_torchvision(self, rng)

    def _make_layer(self, block, planes, blocks, stride, dtype):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = Sequential(
                Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False,
                       dtype=dtype, init=False),
                BatchNorm2d(planes * block.expansion, dtype=dtype))
        layers = [block(self.inplanes, planes, stride, downsample, dtype=dtype, init=False)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, dtype=dtype, init=False))
        return Sequential(*layers)

    def forward(self, x):
        """(N, 3, H, W) images -> (N, num_classes) logits."""
        x = self.maxpool(_conv_bn_relu(x, self.conv1, self.bn1, self.relu))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(_flatten(self.avgpool(x)))

    def _fuse(self):
        fuse_conv(self, "conv1", "bn1", relu=True)


def resnet18(num_classes=1000, *, dtype=np.float32, seed=None):
    """ResNet-18, torchvision's layout and key names."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, dtype=dtype, seed=seed)


def resnet34(num_classes=1000, *, dtype=np.float32, seed=None):
    """ResNet-34, torchvision's layout and key names."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, dtype=dtype, seed=seed)


def resnet50(num_classes=1000, *, dtype=np.float32, seed=None):
    """ResNet-50 (v1.5), torchvision's layout and key names."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, dtype=dtype, seed=seed)


# -------------------------------------------------------------------- MobileNet-V1
_MOBILENET_V1 = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1),
                 (256, 512, 2)] + [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]


def _conv_bn(cin, cout, stride, dtype):
    return Sequential(Conv2d(cin, cout, 3, stride, 1, bias=False, dtype=dtype, init=False),
                      BatchNorm2d(cout, dtype=dtype), ReLU(inplace=True))


def _conv_dw(cin, cout, stride, dtype):
    return Sequential(
        Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False, dtype=dtype, init=False),
        BatchNorm2d(cin, dtype=dtype), ReLU(inplace=True),
        Conv2d(cin, cout, 1, 1, 0, bias=False, dtype=dtype, init=False),
        BatchNorm2d(cout, dtype=dtype), ReLU(inplace=True))


class MobileNetV1(Module):
    """MobileNet-V1: ``features`` (conv 3x3/2 to 32 channels, then 13 depthwise-separable
    blocks: depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU) -> ``avgpool``
    (global) -> flatten -> ``fc``. Key names in the ``engine.models`` docstring."""

    def __init__(self, num_classes=1000, *, dtype=np.float32, seed=None):
        super().__init__()
        rng = _rng(seed)
        blocks = [_conv_bn(3, 32, 2, dtype)]
        blocks += [_conv_dw(cin, cout, s, dtype) for cin, cout, s in _MOBILENET_V1]
        self.features = Sequential(*blocks)
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.fc = Linear(1024, num_classes, dtype=dtype, seed=rng)
        init_like_torchvision(self, rng)

    def forward(self, x):
        """(N, 3, H, W) images -> (N, num_classes) logits."""
        return self.fc(_flatten(self.avgpool(self.features(x))))


def mobilenet_v1(num_classes=1000, *, dtype=np.float32, seed=None):
    """MobileNet-V1 (width 1.0); key names in the ``engine.models`` docstring."""
    return MobileNetV1(num_classes, dtype=dtype, seed=seed)
