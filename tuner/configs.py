"""Config files: networks (layers in order, shapes propagated from the input) and
explicit shape suites. The format is documented in configs/README.md.

``load(path)`` returns a ``Config`` whose ``shapes`` are the distinct convolution and
pooling shapes (``Shape``: a ConvParams or PoolParams plus the layer names using it),
in first-use order. Every problem raises ``ConfigError`` naming the file and the field,
e.g. ``configs/x.json: layers[3].kernel_size: expected a positive int or a pair ...``.
"""
import json
import os
from dataclasses import dataclass, field

from engine import shapes as _shapes

CONV_TYPES = ("conv", "conv2d")
MAXPOOL_TYPES = ("maxpool", "max_pool2d", "maxpool2d")
AVGPOOL_TYPES = ("avgpool", "avg_pool2d", "avgpool2d")
# Layers that keep the shape: allowed so a description can read like the network.
PASS_TYPES = ("relu", "batchnorm", "bn", "identity", "dropout", "add")
DTYPES = ("float32", "float64")


class ConfigError(ValueError):
    """A config file is missing, not JSON, or describes an impossible network."""


# Bounds on what a config may ask for (a hand-written network is far inside them): a
# repeat of 10**9 would loop for ever, a batch of 10**6 would allocate terabytes.
MAX_CONFIG_BYTES = 16 << 20
MAX_REPEAT = 10_000
MAX_LAYERS = 100_000
MAX_TENSOR_BYTES = 4 << 30      # any one input, output or weight array of a shape


@dataclass
class Shape:
    """One distinct layer shape of a config: ``params`` is ConvParams or PoolParams."""
    params: object
    names: list = field(default_factory=list)
    category: str = ""
    count_include_pad: bool = True     # avg pool only
    bias: bool = True                  # conv only

    @property
    def op(self):
        return "conv2d" if isinstance(self.params, _shapes.ConvParams) else self.params.op

    @property
    def name(self):
        return self.names[0] if self.names else ""


@dataclass
class Config:
    path: str
    name: str
    batch: int
    dtype: str
    shapes: list


def _err(path, where, msg):
    return ConfigError(f"{path}: {where}: {msg}" if where else f"{path}: {msg}")


def _int(value, path, where, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _err(path, where, f"expected an int >= {minimum}, got {value!r}")
    return value


def _pairish(value, path, where, minimum=1, allow_str=()):
    """An int or a pair of ints (>= minimum), or one of ``allow_str``."""
    if isinstance(value, str) and value in allow_str:
        return value
    ok = (not isinstance(value, bool) and isinstance(value, int) and value >= minimum) or (
        isinstance(value, list) and len(value) == 2
        and all(not isinstance(v, bool) and isinstance(v, int) and v >= minimum for v in value))
    if not ok:
        extra = f" or one of {list(allow_str)}" if allow_str else ""
        raise _err(path, where, f"expected an int >= {minimum} or a pair of them{extra}, got {value!r}")
    return tuple(value) if isinstance(value, list) else value


def _check_keys(obj, allowed, path, where):
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise _err(path, where, f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def _dtype(value, path, where):
    if value not in DTYPES:
        raise _err(path, where, f"expected one of {list(DTYPES)}, got {value!r}")
    return value


class _Builder:
    def __init__(self, path, dtype):
        self.path, self.dtype = path, dtype
        self.by_key = {}
        self.order = []

    def add(self, params, name, category="", where="", **extra):
        _check_size(params, self.path, where or name)
        key = (repr(sorted(params.key().items())), tuple(sorted(extra.items())))
        s = self.by_key.get(key)
        if s is None:
            s = Shape(params, [], category, **extra)
            self.by_key[key] = s
            self.order.append(s)
        s.names.append(name)
        return s


def _check_size(params, path, where):
    """ConfigError unless every array of the shape fits in MAX_TENSOR_BYTES."""
    itemsize = 8 if params.dtype == "float64" else 4
    k = params.key()
    arrays = {"input": (k["N"], k["C"], k["H"], k["W"]), "output": tuple(params.output_shape)}
    if "out_channels" in k:
        arrays["weight"] = (k["out_channels"], k["C"] // k["groups"], *k["kernel"])
    for what, shape in arrays.items():
        size = itemsize
        for d in shape:
            size *= d
        if size > MAX_TENSOR_BYTES:
            dims = "x".join(str(d) for d in shape)
            raise _err(path, where, f"the {what} {dims} {params.dtype} would take {size / 2**30:.1f} GiB; "
                       f"convtune tunes shapes up to {MAX_TENSOR_BYTES >> 30} GiB per array "
                       f"(a smaller --batch or input)")


_CONV_FIELDS = {"type", "name", "id", "input_of", "in_channels", "out_channels", "kernel_size",
                "stride", "padding", "dilation", "groups", "padding_mode", "bias", "category"}
_POOL_FIELDS = {"type", "name", "id", "input_of", "kernel_size", "stride", "padding", "dilation",
                "ceil_mode", "count_include_pad", "category"}


def _conv(layer, shape, b, where, name, category):
    path = b.path
    _check_keys(layer, _CONV_FIELDS, path, where)
    n, c, h, w = shape
    if "out_channels" not in layer:
        raise _err(path, f"{where}.out_channels", "missing (a conv layer needs out_channels)")
    if "kernel_size" not in layer:
        raise _err(path, f"{where}.kernel_size", "missing (a conv layer needs kernel_size)")
    cout = _int(layer["out_channels"], path, f"{where}.out_channels")
    k = _pairish(layer["kernel_size"], path, f"{where}.kernel_size")
    stride = _pairish(layer.get("stride", 1), path, f"{where}.stride")
    padding = _pairish(layer.get("padding", 0), path, f"{where}.padding", 0, ("same", "valid"))
    dilation = _pairish(layer.get("dilation", 1), path, f"{where}.dilation")
    groups = _int(layer.get("groups", 1), path, f"{where}.groups")
    mode = layer.get("padding_mode", "zeros")
    if mode not in _shapes.PADDING_MODES:
        raise _err(path, f"{where}.padding_mode", f"expected one of {list(_shapes.PADDING_MODES)}, got {mode!r}")
    if "in_channels" in layer and _int(layer["in_channels"], path, f"{where}.in_channels") != c:
        raise _err(path, f"{where}.in_channels", f"is {layer['in_channels']} but the layer's input "
                   f"has {c} channels (shape {n}x{c}x{h}x{w})")
    bias = layer.get("bias", True)
    if not isinstance(bias, bool):
        raise _err(path, f"{where}.bias", f"expected true or false, got {bias!r}")
    if c % groups or cout % groups:
        raise _err(path, f"{where}.groups", f"groups={groups} must divide in_channels={c} and "
                   f"out_channels={cout}")
    kh, kw = _shapes.pair(k, "kernel_size", "conv")
    try:
        p = _shapes.conv_params((n, c, h, w), (cout, c // groups, kh, kw), stride, padding, dilation,
                                groups, mode, b.dtype)
    except (ValueError, TypeError) as e:
        raise _err(path, where, f"impossible on input {n}x{c}x{h}x{w}: {e}") from None
    if p.out_h < 1 or p.out_w < 1:
        raise _err(path, where, f"output would be empty on input {n}x{c}x{h}x{w}")
    b.add(p, name, category or _conv_category(p), where=where, bias=bias)
    return p.output_shape


def _pool(layer, shape, b, where, name, category, op):
    path = b.path
    _check_keys(layer, _POOL_FIELDS, path, where)
    if "kernel_size" not in layer:
        raise _err(path, f"{where}.kernel_size", "missing (a pooling layer needs kernel_size)")
    k = _pairish(layer["kernel_size"], path, f"{where}.kernel_size")
    stride = layer.get("stride")
    if stride is not None:
        stride = _pairish(stride, path, f"{where}.stride")
    padding = _pairish(layer.get("padding", 0), path, f"{where}.padding", 0)
    dilation = _pairish(layer.get("dilation", 1), path, f"{where}.dilation")
    if op == "avg_pool2d" and dilation != 1 and dilation != (1, 1):
        raise _err(path, f"{where}.dilation", "avg pooling has no dilation")
    ceil = layer.get("ceil_mode", False)
    if not isinstance(ceil, bool):
        raise _err(path, f"{where}.ceil_mode", f"expected true or false, got {ceil!r}")
    extra = {}
    if op == "avg_pool2d":
        cip = layer.get("count_include_pad", True)
        if not isinstance(cip, bool):
            raise _err(path, f"{where}.count_include_pad", f"expected true or false, got {cip!r}")
        extra["count_include_pad"] = cip
    elif "count_include_pad" in layer:
        raise _err(path, f"{where}.count_include_pad", "only avg pooling has count_include_pad")
    try:
        p = _shapes.pool_params(op, shape, k, stride, padding, dilation, ceil, b.dtype)
    except (ValueError, TypeError) as e:
        raise _err(path, where, f"impossible on input {'x'.join(map(str, shape))}: {e}") from None
    b.add(p, name, category or "pool", where=where, **extra)
    return p.output_shape


def _conv_category(p):
    if p.is_depthwise:
        return "depthwise"
    if p.dilation != (1, 1):
        return "dilated"
    if p.groups > 1:
        return "grouped"
    return f"{p.kernel[0]}x{p.kernel[1]}" if p.kernel[0] in (1, 3, 5, 7) else "other"


def _walk(layers, shape, b, where, state):
    """Propagate ``shape`` through ``layers``; returns the output shape."""
    if not isinstance(layers, list):
        raise _err(b.path, where, f"expected a list of layers, got {type(layers).__name__}")
    for i, layer in enumerate(layers):
        shape = _one(layer, shape, b, f"{where}[{i}]", state)
    return shape


def _one(layer, shape, b, lw, state):
    if not isinstance(layer, dict):
        raise _err(b.path, lw, f"expected an object, got {layer!r}")
    if "layers" in layer:                   # a group: {"repeat": n, "layers": [...]}
        _check_keys(layer, {"repeat", "layers", "name"}, b.path, lw)
        reps = _int(layer.get("repeat", 1), b.path, f"{lw}.repeat")
        if reps > MAX_REPEAT:
            raise _err(b.path, f"{lw}.repeat", f"expected at most {MAX_REPEAT}, got {reps}")
        for _ in range(reps):
            shape = _walk(layer["layers"], shape, b, f"{lw}.layers", state)
        return shape
    kind = layer.get("type")
    if not isinstance(kind, str):
        raise _err(b.path, f"{lw}.type", f"missing; expected one of conv, maxpool, avgpool "
                   f"(or a pass-through: {', '.join(PASS_TYPES)})")
    kind = kind.lower()
    state["count"] += 1
    if state["count"] > MAX_LAYERS:
        raise _err(b.path, lw, f"more than {MAX_LAYERS} layers (check the repeats)")
    name = layer.get("name") or f"{kind}{state['count']}"
    inp = shape
    if "input_of" in layer:                 # a branch: takes an earlier layer's input
        ref = layer["input_of"]
        if ref not in state["inputs"]:
            raise _err(b.path, f"{lw}.input_of", f"no earlier layer has id {ref!r} "
                       f"(known: {sorted(state['inputs'])})")
        inp = state["inputs"][ref]
    if "id" in layer:
        state["inputs"][layer["id"]] = inp
    category = layer.get("category", "")
    if kind in CONV_TYPES:
        return _conv(layer, inp, b, lw, name, category)
    if kind in MAXPOOL_TYPES:
        return _pool(layer, inp, b, lw, name, category, "max_pool2d")
    if kind in AVGPOOL_TYPES:
        return _pool(layer, inp, b, lw, name, category, "avg_pool2d")
    if kind in PASS_TYPES:
        _check_keys(layer, {"type", "name", "id", "input_of"}, b.path, lw)
        return inp
    raise _err(b.path, f"{lw}.type", f"unknown layer type {layer['type']!r}; expected "
               f"conv, maxpool, avgpool or a pass-through ({', '.join(PASS_TYPES)})")


def _shape_suite(entries, b, batch, where):
    """Explicit shapes: each {"name", "input": [C, H, W], "type": ..., layer fields}."""
    if not isinstance(entries, list):
        raise _err(b.path, where, "expected a list of shapes")
    for i, s in enumerate(entries):
        sw = f"{where}[{i}]"
        if not isinstance(s, dict):
            raise _err(b.path, sw, f"expected an object, got {s!r}")
        inp = s.get("input")
        if not (isinstance(inp, list) and len(inp) == 3):
            raise _err(b.path, f"{sw}.input", f"expected [C, H, W], got {inp!r}")
        c, h, w = (_int(v, b.path, f"{sw}.input") for v in inp)
        layer = {k: v for k, v in s.items() if k != "input"}
        _one(layer, (batch, c, h, w), b, sw, {"count": i, "inputs": {}})


def parse(doc, path="<config>", batch=None, dtype=None):
    """A Config from a parsed JSON document (``batch``/``dtype`` override the file)."""
    if not isinstance(doc, dict):
        raise _err(path, "", "the top level must be a JSON object")
    _check_keys(doc, {"name", "description", "input", "batch", "dtype", "layers", "shapes", "comment"},
                path, "")
    if "layers" not in doc and "shapes" not in doc:
        raise _err(path, "", "needs 'layers' (a network) or 'shapes' (a shape suite)")
    file_batch = _int(doc.get("batch", 1), path, "batch")
    batch = file_batch if batch is None else _int(batch, "--batch", "", 1)
    dtype = _dtype(doc.get("dtype", "float32") if dtype is None else dtype, path, "dtype")
    b = _Builder(path, dtype)
    if "layers" in doc:
        inp = doc.get("input")
        if not (isinstance(inp, list) and len(inp) == 3):
            raise _err(path, "input", f"expected [C, H, W] (the batch is 'batch'), got {inp!r}")
        c, h, w = (_int(v, path, "input") for v in inp)
        _walk(doc["layers"], (batch, c, h, w), b, "layers", {"count": 0, "inputs": {}})
    if "shapes" in doc:
        _shape_suite(doc["shapes"], b, batch, "shapes")
    name = doc.get("name") or os.path.splitext(os.path.basename(path))[0]
    return Config(path, name, batch, dtype, b.order)


def load(path, batch=None, dtype=None):
    """Read and parse the config at ``path``; ConfigError names the file and field."""
    from engine.plan import read_bytes   # a regular file only, at most so many bytes
    path = os.fspath(path)
    try:
        raw, _ = read_bytes(path, MAX_CONFIG_BYTES)
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: cannot read the config: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid JSON: nested too deeply") from None
    try:
        return parse(doc, path, batch, dtype)
    except RecursionError:
        raise ConfigError(f"{path}: layer groups nested too deeply") from None


def from_model(spec, input_shape):
    """A Config of the distinct shapes a model runs: ``spec`` is "package.module:function"
    (e.g. "engine.models:resnet18"), ``input_shape`` "N,C,H,W" (or a tuple). The model is
    built and run once on zeros (``model_shapes.collect_shapes``). ``spec`` may also be
    an engine Module (``--onnx``'s graph), named by its ``name`` attribute."""
    from .model_shapes import collect_shapes
    label = spec if isinstance(spec, str) else getattr(spec, "name", type(spec).__name__)
    where = f"--model {label}" if isinstance(spec, str) else label
    if isinstance(input_shape, str):
        try:
            input_shape = tuple(int(v) for v in input_shape.split(","))
        except ValueError:
            raise _err(where, "--input", f"expected N,C,H,W integers, got {input_shape!r}") from None
    if len(input_shape) != 4 or min(input_shape) <= 0:
        raise _err(where, "--input", f"expected four positive integers N,C,H,W, got {input_shape!r}")
    size = 4
    for d in input_shape:
        size *= d
    if size > MAX_TENSOR_BYTES:
        raise _err(where, "--input", f"{','.join(map(str, input_shape))} would take "
                   f"{size / 2**30:.1f} GiB; at most {MAX_TENSOR_BYTES >> 30} GiB per array")
    try:
        found = collect_shapes(spec, input_shape, details=True)
    except (ValueError, TypeError, ImportError, AttributeError) as e:
        raise _err(where, "", str(e)) from None
    except MemoryError:
        raise _err(where, "--input", f"the model's activations for {input_shape} do not fit "
                   f"in memory; use a smaller --input") from None
    shapes = []
    for d in found:
        p = d["params"]
        category = _conv_category(p) if isinstance(p, _shapes.ConvParams) else "pool"
        shapes.append(Shape(p, list(d["names"]), category,
                            count_include_pad=d.get("count_include_pad", True), bias=d.get("bias", True)))
    dtype = shapes[0].params.dtype if shapes else "float32"
    return Config(path=label, name=label.split(":")[-1], batch=input_shape[0], dtype=dtype, shapes=shapes)


def load_all(paths, batch=None, dtype=None, models=()):
    """Configs (files, then ``(spec, input_shape)`` models) and their distinct shapes
    across all of them (first use wins)."""
    configs = [load(p, batch, dtype) for p in paths] + [from_model(m, i) for m, i in models]
    seen, out = {}, []
    for cfg in configs:
        for s in cfg.shapes:
            key = (repr(sorted(s.params.key().items())), s.count_include_pad, s.bias)
            if key in seen:
                seen[key].names.extend(f"{cfg.name}/{n}" for n in s.names)
                continue
            s2 = Shape(s.params, [f"{cfg.name}/{n}" for n in s.names], s.category, s.count_include_pad, s.bias)
            seen[key] = s2
            out.append(s2)
    return configs, out
