"""The network layer, built on the numerical core (``engine`` proper) and never the
reverse (tests/test_architecture.py checks the import rules):

    module       Module / Sequential: containers, state_dict, .npz save and load
    layers       Conv2d / MaxPool2d / AvgPool2d hold parameters and per-shape operators;
                 ReLU, BatchNorm2d, Linear, ... are what networks need around them
    fusion       fuse: BatchNorm folded into convolutions, ReLU into their kernels
    models       whole networks (VGG, ResNet, MobileNet-V1)
    convert      from_torch: a PyTorch module tree as engine layers (imports torch lazily);
                 classes it does not know by name are traced (fx_trace) into a Graph
    graph        Graph: a network as nodes on named values, specialised per input shape
    onnx_import  from_onnx: an ONNX model as a Graph (needs the onnx package)
    fx_trace     torch.fx symbolic tracing into a Graph
    weights      load_weights: .pth (zip/legacy), .safetensors, .npz -> {name: ndarray},
                 with an allow-list unpickler (nothing in a file is ever executed)
    distributed  predict: batch inference on a Dask cluster

Its public names are re-exported by ``engine`` (``engine.Conv2d``, ``engine.models``, ...).
"""
