"""Hypothesis strategies for random convolution and pooling parameters (small shapes).

Each strategy draws a plain dict of PyTorch-style arguments plus input shapes, a dtype
and a data seed; the arrays are made from the seed by ``conv_arrays``/``pool_array``.
Only valid combinations are drawn (the constraints are PyTorch's, stated here
independently of the engine).
"""
import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

import reference as ref

PADDING_MODES = ["zeros", "reflect", "replicate", "circular"]


@st.composite
def conv_configs(draw, max_hw=16):
    depthwise = draw(st.booleans())
    if depthwise:
        c_in = draw(st.integers(1, 6))
        groups = c_in
        cin_g, cout_g = 1, draw(st.integers(1, 3))
    else:
        groups = draw(st.integers(1, 3))
        cin_g, cout_g = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        c_in = cin_g * groups
    c_out = cout_g * groups
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    if draw(st.integers(0, 3)) == 0:
        kh = kw = 3                        # Winograd's shape, often
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if draw(st.booleans()):
        dilation = (1, 1)
    mode = draw(st.sampled_from(PADDING_MODES))
    pad_kind = draw(st.sampled_from(["pair", "int", "same", "valid"]))
    if pad_kind == "same":
        stride = (1, 1)
        padding = "same"
    else:
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        if draw(st.booleans()):
            stride = (1, 1)
        if pad_kind == "pair":
            padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
        elif pad_kind == "int":
            padding = draw(st.integers(0, 3))
        else:
            padding = "valid"
    top, bottom, left, right = ref.conv_pads(padding, (kh, kw), dilation)

    def size_lo(k, d, before, after):
        lo = max(1, d * (k - 1) + 1 - before - after)       # the kernel fits the padded input
        if mode == "reflect":
            lo = max(lo, max(before, after) + 1)             # reflect: pad < size
        elif mode == "circular":
            lo = max(lo, max(before, after))                 # circular: pad <= size
        return lo

    lo_h, lo_w = size_lo(kh, dilation[0], top, bottom), size_lo(kw, dilation[1], left, right)
    assume(lo_h <= max_hw and lo_w <= max_hw)
    h = draw(st.integers(lo_h, min(max_hw, lo_h + 10)))
    w = draw(st.integers(lo_w, min(max_hw, lo_w + 10)))
    n = draw(st.integers(0, 3))
    unbatched = n == 1 and draw(st.booleans())
    x_shape = (c_in, h, w) if unbatched else (n, c_in, h, w)
    return dict(
        x_shape=x_shape, w_shape=(c_out, cin_g, kh, kw), bias=draw(st.booleans()),
        kwargs=dict(stride=stride, padding=padding, dilation=dilation, groups=groups, padding_mode=mode),
        dtype=draw(st.sampled_from(["float32", "float64"])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def conv_arrays(cfg):
    rng = np.random.default_rng(cfg["seed"])
    dtype = cfg["dtype"]
    x = rng.standard_normal(cfg["x_shape"]).astype(dtype)
    c_out, cin_g, kh, kw = cfg["w_shape"]
    w = (rng.standard_normal(cfg["w_shape"]) / np.sqrt(cin_g * kh * kw)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype) if cfg["bias"] else None
    return x, w, b


@st.composite
def pool_configs(draw, op, max_hw=14, max_w=40):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 7))
    if draw(st.booleans()):
        stride = None
        sh, sw = kh, kw
    else:
        sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        stride = (sh, sw)
    padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if op == "max" else (1, 1)
    ceil_mode = draw(st.booleans())

    def size_lo(k, s, p, d):
        lo = max(1, d * (k - 1) + 1 - 2 * p - (s - 1 if ceil_mode else 0))
        while ref.pool_out_size(lo, k, s, p, d, ceil_mode) < 1:
            lo += 1
        return lo

    lo_h, lo_w = size_lo(kh, sh, padding[0], dilation[0]), size_lo(kw, sw, padding[1], dilation[1])
    assume(lo_h <= max_hw and lo_w <= max_w)
    h = draw(st.integers(lo_h, min(max_hw, lo_h + 9)))
    w = draw(st.integers(lo_w, min(max_w, lo_w + 30)))
    n = draw(st.integers(0, 3))
    c = draw(st.integers(1, 5))
    unbatched = n == 1 and draw(st.booleans())
    kwargs = dict(kernel_size=(kh, kw), stride=stride, padding=padding, ceil_mode=ceil_mode)
    if op == "max":
        kwargs["dilation"] = dilation
    else:
        kwargs["count_include_pad"] = draw(st.booleans())
        kwargs["divisor_override"] = draw(st.one_of(st.none(), st.integers(1, 9), st.integers(-4, -1)))
    return dict(
        x_shape=(c, h, w) if unbatched else (n, c, h, w), kwargs=kwargs,
        dtype=draw(st.sampled_from(["float32", "float64"])),
        fill=draw(st.sampled_from(["normal", "normal", "ints", "nan", "inf"])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def pool_array(cfg):
    from cases import make_input
    return make_input(cfg["x_shape"], cfg["fill"], cfg["dtype"], np.random.default_rng(cfg["seed"]))
