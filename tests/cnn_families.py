"""Small hand-built PyTorch modules, one per CNN family the graph path must run: each
reproduces the structure (and the functions and tensor methods) of its torchvision
architecture at a few channels, for tests/test_fx.py (torch.fx conversion) and the
ONNX-export tests there. Importing this module needs torch."""
import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin, cout, k, stride=1, groups=1, act=nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act(inplace=True) if act in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish) else act())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2: 1x1 expand (ReLU6), 3x3 depthwise (ReLU6), 1x1 project, + x."""

    def __init__(self, c=8, expand=4):
        super().__init__()
        h = c * expand
        self.conv = nn.Sequential(conv_bn(c, h, 1, act=nn.ReLU6), conv_bn(h, h, 3, groups=h, act=nn.ReLU6),
                                  nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.conv(x)


class MobileNetV2ish(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8, 3, 2, act=nn.ReLU6), InvertedResidual(8),
                                      InvertedResidual(8))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(8, 10))

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


class Fire(nn.Module):
    """SqueezeNet: squeeze 1x1, then 1x1 and 3x3 expands concatenated."""

    def __init__(self, cin, squeeze, e1, e3):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, ceil_mode=True), Fire(8, 4, 8, 8), Fire(16, 4, 8, 8))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(16, 10, 1), nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """GoogLeNet: four branches concatenated, one through a ceil-mode max pool."""

    def __init__(self, cin):
        super().__init__()
        self.branch1 = BasicConv2d(cin, 4, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, 4, kernel_size=1), BasicConv2d(4, 6, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(cin, 2, kernel_size=1), BasicConv2d(2, 4, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv2d(cin, 4, kernel_size=1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = BasicConv2d(3, 8, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception = Inception(8)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(18, 10)

    def _transform_input(self, x):   # torchvision's transform_input
        x_ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
        x_ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
        x_ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
        return torch.cat((x_ch0, x_ch1, x_ch2), 1)

    def forward(self, x):
        x = self.maxpool1(self.conv1(self._transform_input(x)))
        x = self.avgpool(self.inception(x))
        return self.fc(self.dropout(torch.flatten(x, 1)))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(2 * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, inputs):
        x = torch.cat(inputs, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseNetish(nn.Module):
    """DenseNet: each layer reads the concatenation of all before it."""

    def __init__(self, c=8, growth=4, n=3):
        super().__init__()
        self.conv0 = nn.Conv2d(3, c, 3, 2, 1, bias=False)
        self.layers = nn.ModuleList(DenseLayer(c + i * growth, growth) for i in range(n))
        self.norm5 = nn.BatchNorm2d(c + n * growth)
        self.transition = nn.Sequential(nn.Conv2d(c + n * growth, c, 1, bias=False), nn.AvgPool2d(2, 2))
        self.classifier = nn.Linear(c, 10)

    def forward(self, x):
        features = [self.conv0(x)]
        for layer in self.layers:
            features.append(layer(features))
        out = F.relu(self.norm5(torch.cat(features, 1)), inplace=True)
        out = F.adaptive_avg_pool2d(self.transition(out), (1, 1))
        return self.classifier(torch.flatten(out, 1))


def channel_shuffle(x, groups):
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2: split the channels, transform one half, concatenate, shuffle."""

    def __init__(self, c):
        super().__init__()
        h = c // 2
        self.branch2 = nn.Sequential(conv_bn(h, h, 1), conv_bn(h, h, 3, groups=h, act=None), conv_bn(h, h, 1))

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((x1, self.branch2(x2)), dim=1), 2)


class ShuffleNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = conv_bn(3, 8, 3, 2)
        self.stage = nn.Sequential(ShuffleUnit(8), ShuffleUnit(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stage(self.conv1(x))
        return self.fc(x.mean([2, 3]))


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: scale = sigma(fc2(act(fc1(avgpool(x)))))."""

    def __init__(self, c, squeeze, activation=nn.ReLU, scale_activation=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def forward(self, x):
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class MBConv(nn.Module):
    """EfficientNet: expand (SiLU), depthwise (SiLU), SE, project, residual."""

    def __init__(self, c=8, expand=4):
        super().__init__()
        h = c * expand
        self.block = nn.Sequential(conv_bn(c, h, 1, act=nn.SiLU), conv_bn(h, h, 3, groups=h, act=nn.SiLU),
                                   SqueezeExcitation(h, 2, nn.SiLU), conv_bn(h, c, 1, act=None))

    def forward(self, x):
        return self.block(x) + x


class EfficientNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8, 3, 2, act=nn.SiLU), MBConv(8), MBConv(8))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2, inplace=True), nn.Linear(8, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class MobileNetV3Block(nn.Module):
    """MobileNetV3: hardswish activations and a hardsigmoid-gated SE."""

    def __init__(self, c=8):
        super().__init__()
        self.block = nn.Sequential(conv_bn(c, 16, 1, act=nn.Hardswish), conv_bn(16, 16, 5, groups=16, act=nn.Hardswish),
                                   SqueezeExcitation(16, 8, nn.ReLU, nn.Hardsigmoid), conv_bn(16, c, 1, act=None))

    def forward(self, x):
        return x + self.block(x)


class MobileNetV3ish(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8, 3, 2, act=nn.Hardswish), MobileNetV3Block(8))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(8, 16), nn.Hardswish(inplace=True), nn.Dropout(0.2),
                                        nn.Linear(16, 10))

    def forward(self, x):
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


class RegNetBlock(nn.Module):
    """RegNet Y: 1x1, grouped 3x3 with stride, SE, 1x1, projected shortcut, ReLU."""

    def __init__(self, cin=8, cout=16, group_width=4):
        super().__init__()
        self.proj = conv_bn(cin, cout, 1, 2, act=None)
        self.f = nn.Sequential(conv_bn(cin, cout, 1), conv_bn(cout, cout, 3, 2, groups=cout // group_width),
                               SqueezeExcitation(cout, 2), conv_bn(cout, cout, 1, act=None))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.activation(self.proj(x) + self.f(x))


class RegNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8, 3, 2)
        self.trunk_output = nn.Sequential(RegNetBlock())
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.avgpool(self.trunk_output(self.stem(x)))
        return self.fc(x.flatten(start_dim=1))


class AlexNetish(nn.Module):
    """AlexNet: 11x11/4 convolution, max pools, adaptive pool to 6x6 (an uneven one
    here), flatten, a dropout/linear classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
                                      nn.Conv2d(8, 12, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
                                      nn.Conv2d(12, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(8 * 36, 32), nn.ReLU(inplace=True),
                                        nn.Dropout(0.5), nn.Linear(32, 10))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# name -> (module class, input H = W): AlexNet's 111 gives the 6x6 features its
# adaptive pool expects, as 224 does for torchvision's (the ONNX exporter can only
# export an adaptive pool that divides evenly).
FAMILIES = {
    "mobilenet_v2": (MobileNetV2ish, 16), "squeezenet": (SqueezeNetish, 17),
    "googlenet": (GoogLeNetish, 20), "densenet": (DenseNetish, 16),
    "shufflenet": (ShuffleNetish, 16), "efficientnet": (EfficientNetish, 16),
    "mobilenet_v3": (MobileNetV3ish, 16), "regnet": (RegNetish, 16), "alexnet": (AlexNetish, 111),
}


def build(name, seed=0):
    """The family's module in eval mode with random weights and BatchNorm statistics
    (so that folding them is exercised)."""
    torch.manual_seed(seed)
    cls, size = FAMILIES[name]
    m = cls()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval(), size
