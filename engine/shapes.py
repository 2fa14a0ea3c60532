"""Parameter normalisation and output-size arithmetic: the one place for both.

Everything here is plain Python over ints. ``conv_params`` and ``pool_params`` turn
PyTorch-style arguments (int or pair, ``"same"``/``"valid"``, ``stride=None`` ...)
into frozen records, raising ``TypeError``/``ValueError`` with PyTorch's rules and a
message that says what was expected. Kernels receive only what these records say.
"""
import numbers
from dataclasses import dataclass

import numpy as np

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
SUPPORTED_DTYPES = ("float32", "float64")
# Kernel parameters are C ints: anything beyond is refused here, never wrapped.
INT_LIMIT = 2 ** 31 - 1


# ----------------------------------------------------------------------------- ints
def _as_int(value, name, op):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if abs(int(value)) > INT_LIMIT:
        raise ValueError(f"{op}: {name}={value} is out of range (at most {INT_LIMIT})")
    return int(value)


def float_dtype(a, name, op):
    """The native-byte-order dtype of ndarray ``a``, which must be float32 or float64;
    TypeError saying what was expected otherwise (lists, masked arrays, ints, float16...)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{op}: {name} must be a numpy.ndarray, got {type(a).__name__}")
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{op}: {name} is a masked array, whose mask would be ignored; "
                        f"pass a plain ndarray (e.g. {name}.filled(0))")
    if a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
        raise TypeError(f"{op}: {name} has dtype {a.dtype}; expected float32 or float64")
    return np.dtype(a.dtype.newbyteorder("="))


def pair(value, name, op):
    """``3 -> (3, 3)``; ``(2, 3) -> (2, 3)``; anything else is a TypeError/ValueError."""
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            value = (value[0], value[0])
        if len(value) != 2:
            raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
        return (_as_int(value[0], name, op), _as_int(value[1], name, op))
    v = _as_int(value, name, op)
    return (v, v)


def _positive(values, name, op):
    if min(values) <= 0:
        raise ValueError(f"{op}: {name} must be positive, got {values}")
    return values


def _non_negative(values, name, op):
    if min(values) < 0:
        raise ValueError(f"{op}: negative padding is not supported, got {name}={values}")
    return values


def conv_output_size(size, pad_before, pad_after, kernel, stride, dilation):
    """floor((size + pad_before + pad_after - dilation*(kernel-1) - 1) / stride) + 1."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(size, kernel, stride, pad, dilation, ceil_mode):
    """PyTorch's pooling_output_shape: like the convolution formula, rounded up when
    ``ceil_mode``, except that the last window must start inside the input or the
    left padding (a window starting in the right padding is dropped)."""
    numerator = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


# ----------------------------------------------------------------------- convolution
@dataclass(frozen=True)
class ConvParams:
    """A 2-D convolution, fully resolved. ``pads`` is (top, bottom, left, right)."""
    n: int
    c_in: int
    h: int
    w: int
    c_out: int
    kernel: tuple
    stride: tuple
    pads: tuple
    dilation: tuple
    groups: int
    padding_mode: str
    dtype: str

    @property
    def out_h(self):
        return conv_output_size(self.h, self.pads[0], self.pads[1], self.kernel[0],
                                self.stride[0], self.dilation[0])

    @property
    def out_w(self):
        return conv_output_size(self.w, self.pads[2], self.pads[3], self.kernel[1],
                                self.stride[1], self.dilation[1])

    @property
    def output_shape(self):
        return (self.n, self.c_out, self.out_h, self.out_w)

    @property
    def is_depthwise(self):
        """groups == C_in (any depth multiplier), PyTorch's definition."""
        return self.groups == self.c_in and self.groups > 1

    @property
    def flops(self):
        """Multiply-adds times two, the usual GFLOP/s numerator."""
        return (2 * self.n * self.c_out * self.out_h * self.out_w
                * (self.c_in // self.groups) * self.kernel[0] * self.kernel[1])

    def key(self):
        """A JSON-friendly dict of everything that identifies the shape."""
        return {
            "op": "conv2d", "dtype": self.dtype, "N": self.n, "C": self.c_in, "H": self.h,
            "W": self.w, "out_channels": self.c_out, "kernel": list(self.kernel),
            "stride": list(self.stride), "padding": list(self.pads),
            "dilation": list(self.dilation), "groups": self.groups,
            "padding_mode": self.padding_mode,
        }


def conv_padding(padding, kernel, stride, dilation, op="conv2d"):
    """Normalise ``padding`` (int, pair, "same", "valid") to (top, bottom, left, right).

    "same" pads a total of dilation*(kernel-1) per axis, the smaller half before:
    PyTorch's split, asymmetric for even kernels. It needs stride 1, as in PyTorch.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{op}: padding='same' is not supported for strided "
                                 f"convolutions (stride={stride}); use an explicit padding")
            total = [d * (k - 1) for d, k in zip(dilation, kernel)]
            return (total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2)
        raise ValueError(f"{op}: invalid padding string {padding!r}, expected 'same' or 'valid'")
    ph, pw = _non_negative(pair(padding, "padding", op), "padding", op)
    return (ph, ph, pw, pw)


def check_padding_mode(padding_mode, op="conv2d"):
    if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
        raise ValueError(f"{op}: padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    return padding_mode


@dataclass(frozen=True)
class ConvLayerArgs:
    """A convolution layer's hyper-parameters, checked (``conv_layer_args``)."""
    in_channels: int
    out_channels: int
    kernel_size: tuple
    stride: tuple
    padding: object        # "same" / "valid" or a pair
    dilation: tuple
    groups: int
    padding_mode: str
    dtype: np.dtype

    @property
    def weight_shape(self):
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)


def conv_layer_args(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                    groups=1, padding_mode="zeros", dtype=np.float32, op="Conv2d"):
    """``nn.Conv2d``'s arguments checked and normalised, before any input is seen:
    TypeError/ValueError naming ``op`` and what is wrong."""
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{op}: {name} must be an int, got {v!r}")
        if v <= 0:
            raise ValueError(f"{op}: {name} must be positive, got {v}")
    if in_channels % groups:
        raise ValueError(f"{op}: in_channels ({in_channels}) must be divisible by groups ({groups})")
    if out_channels % groups:
        raise ValueError(f"{op}: out_channels ({out_channels}) must be divisible by groups ({groups})")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{op}: dtype must be float32 or float64, got {dtype}")
    kernel = pair(kernel_size, "kernel_size", op)
    if min(kernel) <= 0:
        raise ValueError(f"{op}: kernel_size must be positive, got {kernel}")
    stride, dilation = pair(stride, "stride", op), pair(dilation, "dilation", op)
    if min(stride) <= 0 or min(dilation) <= 0:
        raise ValueError(f"{op}: stride and dilation must be positive, got stride={stride}, "
                         f"dilation={dilation}")
    conv_padding(padding, kernel, stride, dilation, op)  # check
    return ConvLayerArgs(int(in_channels), int(out_channels), kernel, stride,
                         padding if isinstance(padding, str) else pair(padding, "padding", op),
                         dilation, int(groups), check_padding_mode(padding_mode, op), dtype)


def conv_params(input_shape, weight_shape, stride, padding, dilation, groups, padding_mode, dtype,
                *, pads=None):
    """Resolve and check a convolution against PyTorch's rules; returns ConvParams.

    ``input_shape`` is 4-D (N, C, H, W) (the caller has already added the batch axis to
    unbatched input); ``weight_shape`` is (C_out, C_in/groups, kH, kW). ``pads``, when
    given, is the resolved (top, bottom, left, right) zero padding in place of
    ``padding``: what nn.Conv2d cannot express (ONNX's asymmetric pads and auto_pad).
    """
    op = "conv2d"
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"{op}: groups must be an int, got {groups!r}")
    groups = int(groups)
    if groups <= 0:
        raise ValueError(f"{op}: groups must be a positive integer, got {groups}")
    stride = _positive(pair(stride, "stride", op), "stride", op)
    dilation = _positive(pair(dilation, "dilation", op), "dilation", op)
    padding_mode = check_padding_mode(padding_mode, op)
    n, c_in, h, w = (int(s) for s in input_shape)
    c_out, c_per_group, kh, kw = (int(s) for s in weight_shape)
    if min(kh, kw) <= 0:
        raise ValueError(f"{op}: kernel size must be positive, got weight of shape {tuple(weight_shape)}")
    if c_out <= 0 or c_per_group <= 0:
        raise ValueError(f"{op}: weight of shape {tuple(weight_shape)} has no channels")
    if c_out % groups:
        raise ValueError(f"{op}: groups={groups} must divide out_channels; weight has "
                         f"{c_out} output channels (dimension 0)")
    if c_per_group * groups != c_in:
        raise ValueError(f"{op}: given groups={groups} and weight of shape {tuple(weight_shape)}, "
                         f"expected input of shape {tuple(input_shape)} to have "
                         f"{c_per_group * groups} channels, but got {c_in} channels instead")
    if min(h, w) <= 0:
        raise ValueError(f"{op}: input of shape {tuple(input_shape)} has an empty spatial dimension")
    if pads is None:
        pads = conv_padding(padding, (kh, kw), stride, dilation, op)
    else:
        if not isinstance(pads, (tuple, list)) or len(pads) != 4:
            raise ValueError(f"{op}: pads must be (top, bottom, left, right), got {pads!r}")
        pads = tuple(_as_int(v, "pads", op) for v in pads)
        _non_negative(pads, "pads", op)
    if padding_mode in ("reflect", "circular"):
        # PyTorch's F.pad: reflect needs pad < size, circular pad <= size.
        for before, after, size, axis in ((pads[0], pads[1], h, "height"), (pads[2], pads[3], w, "width")):
            limit_ok = (max(before, after) < size) if padding_mode == "reflect" else (max(before, after) <= size)
            if not limit_ok:
                rule = "smaller than" if padding_mode == "reflect" else "at most"
                raise ValueError(f"{op}: {padding_mode} padding of {max(before, after)} on the {axis} "
                                 f"must be {rule} the input {axis} {size}")
    p = ConvParams(n, c_in, h, w, c_out, (kh, kw), stride, pads, dilation, groups, padding_mode, dtype)
    eff_h = dilation[0] * (kh - 1) + 1
    eff_w = dilation[1] * (kw - 1) + 1
    padded_h = h + pads[0] + pads[1]
    padded_w = w + pads[2] + pads[3]
    if padded_h < eff_h or padded_w < eff_w:
        raise ValueError(f"{op}: calculated padded input size per channel ({padded_h} x {padded_w}) "
                         f"is smaller than the (dilated) kernel ({eff_h} x {eff_w}); the kernel "
                         f"can't be greater than the padded input")
    return p


# --------------------------------------------------------------------------- pooling
@dataclass(frozen=True)
class PoolParams:
    """A 2-D pooling, fully resolved (padding is symmetric per axis, as in PyTorch)."""
    op: str
    n: int
    c: int
    h: int
    w: int
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    ceil_mode: bool
    dtype: str

    @property
    def out_h(self):
        return pool_output_size(self.h, self.kernel[0], self.stride[0], self.padding[0],
                                self.dilation[0], self.ceil_mode)

    @property
    def out_w(self):
        return pool_output_size(self.w, self.kernel[1], self.stride[1], self.padding[1],
                                self.dilation[1], self.ceil_mode)

    @property
    def output_shape(self):
        return (self.n, self.c, self.out_h, self.out_w)

    def key(self):
        return {
            "op": self.op, "dtype": self.dtype, "N": self.n, "C": self.c, "H": self.h, "W": self.w,
            "kernel": list(self.kernel), "stride": list(self.stride),
            "padding": list(self.padding), "dilation": list(self.dilation),
            "ceil_mode": self.ceil_mode,
        }


def pool_window(op, kernel_size, stride, padding, dilation):
    """Normalise a pooling window: (kernel, stride, padding, dilation) as pairs.

    ``stride=None`` (or ``[]``) means the kernel size; padding may be at most half the
    kernel, as PyTorch requires."""
    kernel = _positive(pair(kernel_size, "kernel_size", op), "kernel_size", op)
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        stride = kernel
    stride = _positive(pair(stride, "stride", op), "stride", op)
    padding = _non_negative(pair(padding, "padding", op), "padding", op)
    dilation = _positive(pair(dilation, "dilation", op), "dilation", op)
    for k, p in zip(kernel, padding):
        if p > k // 2:
            raise ValueError(f"{op}: pad should be at most half of kernel size, but got "
                             f"padding={padding} for kernel_size={kernel}")
    return kernel, stride, padding, dilation


def pool_params(op, input_shape, kernel_size, stride, padding, dilation, ceil_mode, dtype):
    """Resolve and check a pooling against PyTorch's rules; returns PoolParams."""
    kernel, stride, padding, dilation = pool_window(op, kernel_size, stride, padding, dilation)
    n, c, h, w = (int(s) for s in input_shape)
    if min(h, w) <= 0 or c <= 0:
        raise ValueError(f"{op}: input of shape {tuple(input_shape)} has an empty non-batch dimension")
    p = PoolParams(op, n, c, h, w, kernel, stride, padding, dilation, bool(ceil_mode), dtype)
    if p.out_h < 1 or p.out_w < 1:
        raise ValueError(f"{op}: given input of size ({h} x {w}), kernel_size={kernel}, "
                         f"stride={stride}, padding={padding}, dilation={dilation}, the output "
                         f"size ({p.out_h} x {p.out_w}) is too small")
    return p
