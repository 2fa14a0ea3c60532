"""The named edge cases, as data. Test ids are the case names.

ConvCase: input shape x ((N, C, H, W) or unbatched (C, H, W)), weight shape w
(C_out, C_in/groups, kH, kW) and nn.Conv2d's arguments. PoolCase: one max or avg pool.
``fill`` says how the input is drawn (see ``make_input``). Inputs are deterministic
per case name, so a failure reproduces.
"""
import zlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ConvCase:
    id: str
    x: tuple
    w: tuple
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1
    padding_mode: str = "zeros"
    bias: bool = True
    fill: str = "normal"

    @property
    def kwargs(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups, padding_mode=self.padding_mode)

    @property
    def finite(self):
        return self.fill not in NONFINITE_FILLS

    def batched_x(self):
        return self.x if len(self.x) == 4 else (1, *self.x)


@dataclass(frozen=True)
class PoolCase:
    id: str
    op: str                 # "max" | "avg"
    x: tuple
    kernel_size: object
    stride: object = None
    padding: object = 0
    dilation: object = 1    # max only
    ceil_mode: bool = False
    count_include_pad: bool = True      # avg only
    divisor_override: object = None     # avg only
    fill: str = "normal"

    @property
    def kwargs(self):
        if self.op == "max":
            return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                        dilation=self.dilation, ceil_mode=self.ceil_mode)
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    ceil_mode=self.ceil_mode, count_include_pad=self.count_include_pad,
                    divisor_override=self.divisor_override)


NONFINITE_FILLS = ("nan", "inf", "nan_inf", "neginf")


def seed_of(name):
    return zlib.crc32(name.encode())


def make_input(shape, fill, dtype, rng):
    """normal: N(0,1); ints: integers in [-2, 2] (many ties); const: all 1.5;
    big: N(0, 300); nan: ~15% NaN; inf: ~10% +inf and ~10% -inf; nan_inf: both;
    neginf: all -inf."""
    x = rng.standard_normal(shape)
    if fill == "ints":
        x = rng.integers(-2, 3, size=shape).astype(np.float64)
    elif fill == "const":
        x = np.full(shape, 1.5)
    elif fill == "big":
        x = x * 300.0
    elif fill == "neginf":
        x = np.full(shape, -np.inf)
    if fill in ("nan", "nan_inf"):
        x[rng.random(shape) < 0.15] = np.nan
    if fill in ("inf", "nan_inf"):
        u = rng.random(shape)
        x[u < 0.1] = np.inf
        x[(u >= 0.1) & (u < 0.2)] = -np.inf
    return x.astype(dtype)


def conv_inputs(case, dtype):
    """(x, weight, bias or None) for a ConvCase; weights scaled by 1/sqrt(fan_in)."""
    rng = np.random.default_rng(seed_of(case.id))
    x = make_input(case.x, case.fill, dtype, rng)
    fan_in = case.w[1] * case.w[2] * case.w[3]
    w = (rng.standard_normal(case.w) / np.sqrt(fan_in)).astype(dtype)
    b = rng.standard_normal(case.w[0]).astype(dtype) if case.bias else None
    return x, w, b


def pool_input(case, dtype):
    rng = np.random.default_rng(seed_of(case.id))
    return make_input(case.x, case.fill, dtype, rng)


C = ConvCase
CONV_CASES = [
    # --- Winograd single and partial tiles: 3x3, stride 1 (outputs 1,2,3,4,5,6,7,8,12,13)
    C("wino_out1x1", (1, 2, 3, 3), (3, 2, 3, 3)),
    C("wino_out2x2", (1, 3, 4, 4), (2, 3, 3, 3)),
    C("wino_out3x3", (2, 2, 5, 5), (2, 2, 3, 3)),
    C("wino_out4x4", (1, 4, 6, 6), (4, 4, 3, 3)),
    C("wino_out5x5", (1, 3, 7, 7), (5, 3, 3, 3)),
    C("wino_out6x6_pad1", (1, 2, 6, 6), (3, 2, 3, 3), padding=1),
    C("wino_out7x7", (2, 3, 9, 9), (4, 3, 3, 3)),
    C("wino_out8x8_pad1", (1, 5, 8, 8), (3, 5, 3, 3), padding=1),
    C("wino_out12x12_pad1", (1, 4, 12, 12), (6, 4, 3, 3), padding=1),
    C("wino_out13x13", (1, 3, 15, 15), (4, 3, 3, 3)),
    C("wino_out1x9_rect", (1, 2, 3, 11), (2, 2, 3, 3)),
    C("wino_out5x2_rect", (2, 2, 7, 4), (3, 2, 3, 3)),
    C("wino_out3x14_pad1", (1, 3, 3, 14), (2, 3, 3, 3), padding=1),
    C("wino_pad2", (1, 2, 5, 5), (2, 2, 3, 3), padding=2),
    C("wino_same", (1, 3, 10, 9), (4, 3, 3, 3), padding="same"),
    C("wino_groups2", (1, 8, 9, 9), (6, 4, 3, 3), padding=1, groups=2),
    C("wino_depthwise", (1, 5, 8, 8), (5, 1, 3, 3), padding=1, groups=5),
    C("wino_nobias", (1, 3, 7, 7), (3, 3, 3, 3), padding=1, bias=False),
    # --- every padding side
    C("pad_h_only", (1, 3, 7, 6), (4, 3, 3, 3), padding=(1, 0)),
    C("pad_w_only", (1, 3, 7, 6), (4, 3, 3, 3), padding=(0, 1)),
    C("pad_2_1", (1, 2, 6, 8), (3, 2, 3, 3), padding=(2, 1)),
    C("pad_larger_than_kernel_half", (1, 2, 5, 5), (2, 2, 2, 2), padding=3),
    C("pad_valid", (1, 2, 6, 6), (2, 2, 3, 3), padding="valid"),
    C("same_even_2x2", (1, 2, 6, 7), (3, 2, 2, 2), padding="same"),
    C("same_even_4x4", (1, 2, 8, 8), (2, 2, 4, 4), padding="same"),
    C("same_even_2x4", (2, 3, 7, 9), (2, 3, 2, 4), padding="same"),
    C("same_even_dilated", (1, 2, 9, 9), (2, 2, 2, 4), padding="same", dilation=(3, 1)),
    C("same_5x5_dilated2", (1, 2, 12, 12), (3, 2, 5, 5), padding="same", dilation=2),
    # --- channels off the vector width
    C("cin1_cout1", (1, 1, 8, 8), (1, 1, 3, 3), padding=1),
    C("cin3_cout13", (2, 3, 9, 9), (13, 3, 3, 3), padding=1),
    C("cin13_cout17", (1, 13, 7, 7), (17, 13, 3, 3), padding=1),
    C("cin17_cout3", (1, 17, 6, 6), (3, 17, 3, 3)),
    C("cin17_cout17_1x1", (1, 17, 5, 5), (17, 17, 1, 1)),
    # --- batch 1..5
    C("batch1", (1, 3, 6, 6), (4, 3, 3, 3), padding=1),
    C("batch2", (2, 3, 6, 6), (4, 3, 3, 3), padding=1),
    C("batch3", (3, 4, 5, 7), (5, 4, 3, 3)),
    C("batch4", (4, 2, 6, 5), (3, 2, 2, 3), stride=2),
    C("batch5", (5, 3, 8, 8), (2, 3, 3, 3), padding=1, stride=2),
    # --- non-square kernels and strides
    C("kernel_1x3", (1, 3, 6, 8), (4, 3, 1, 3), padding=(0, 1)),
    C("kernel_3x1", (1, 3, 8, 6), (4, 3, 3, 1), padding=(1, 0)),
    C("kernel_2x5", (2, 2, 9, 11), (3, 2, 2, 5), padding=(1, 2)),
    C("kernel_5x5", (1, 3, 9, 9), (4, 3, 5, 5), padding=2),
    C("kernel_7x7_s2", (1, 3, 16, 16), (4, 3, 7, 7), stride=2, padding=3),
    C("kernel_eq_input", (2, 3, 5, 5), (4, 3, 5, 5)),
    C("stride_2x1", (1, 3, 9, 8), (4, 3, 3, 3), stride=(2, 1), padding=1),
    C("stride_1x3", (1, 3, 8, 10), (4, 3, 3, 3), stride=(1, 3)),
    C("stride_3_gt_kernel", (1, 2, 10, 10), (3, 2, 2, 2), stride=3),
    C("stride_2_k3_even_in", (1, 2, 8, 8), (3, 2, 3, 3), stride=2, padding=1),
    # --- 1x1 (plain GEMM) and its variants
    C("conv1x1", (2, 8, 5, 6), (12, 8, 1, 1)),
    C("conv1x1_stride2", (1, 8, 7, 7), (4, 8, 1, 1), stride=2),
    C("conv1x1_pad1", (1, 4, 5, 5), (3, 4, 1, 1), padding=1),
    C("conv1x1_nobias", (1, 4, 5, 5), (3, 4, 1, 1), bias=False),
    # --- dilation
    C("dilation2", (1, 3, 9, 9), (4, 3, 3, 3), dilation=2),
    C("dilation2_pad2", (1, 3, 8, 8), (4, 3, 3, 3), dilation=2, padding=2),
    C("dilation_1x3_stride2", (1, 2, 10, 12), (3, 2, 3, 2), dilation=(1, 3), stride=2, padding=(1, 2)),
    # 3x3 stride 1: Winograd through the polyphase split when the pads are multiples
    C("dilation3_rect_groups2", (2, 4, 11, 10), (6, 2, 3, 3), dilation=(3, 2), padding=(3, 2), groups=2),
    C("dilation_1x2_pad_h2", (1, 3, 7, 9), (4, 3, 3, 3), dilation=(1, 2), padding=(2, 0)),
    C("dilation2_pad1_not_multiple", (1, 3, 9, 9), (4, 3, 3, 3), dilation=2, padding=1),
    # --- groups, depthwise, depth multiplier
    C("groups2", (1, 6, 7, 7), (4, 3, 3, 3), groups=2, padding=1),
    C("groups3_cout6", (2, 9, 6, 6), (6, 3, 3, 3), groups=3),
    C("groups4_1x1", (1, 8, 5, 5), (12, 2, 1, 1), groups=4),
    C("groups2_stride2_dil2", (1, 4, 11, 11), (6, 2, 3, 3), groups=2, stride=2, dilation=2, padding=1),
    C("depthwise_3x3", (2, 13, 8, 8), (13, 1, 3, 3), groups=13, padding=1),
    C("depthwise_mult2", (1, 3, 7, 7), (6, 1, 3, 3), groups=3, padding=1),
    C("depthwise_mult3_s2", (1, 4, 9, 9), (12, 1, 3, 3), groups=4, stride=2, padding=1),
    C("depthwise_5x5_dil2", (1, 3, 12, 12), (3, 1, 5, 5), groups=3, dilation=2, padding=4),
    C("depthwise_1x1", (1, 5, 4, 4), (5, 1, 1, 1), groups=5),
    C("cin1_cout2", (1, 1, 6, 6), (2, 1, 3, 3)),
    C("depthwise_nonsquare_s21", (2, 4, 9, 7), (8, 1, 2, 3), groups=4, stride=(2, 1), padding=(1, 1)),
    C("depthwise_wide", (1, 2, 3, 40), (2, 1, 3, 3), groups=2, padding=1),
    # the small-plane path's flattened copies at their edges: one row, one column
    C("depthwise_one_row", (2, 3, 1, 9), (6, 1, 3, 3), groups=3, padding=1),
    C("depthwise_one_column", (1, 2, 7, 1), (2, 1, 3, 3), groups=2, padding=1),
    # --- padding modes
    C("reflect_pad1", (1, 3, 6, 6), (4, 3, 3, 3), padding=1, padding_mode="reflect"),
    C("reflect_pad_max", (1, 2, 4, 5), (3, 2, 3, 5), padding=(3, 4), padding_mode="reflect"),
    C("replicate_pad2", (1, 3, 5, 6), (2, 3, 3, 3), padding=2, padding_mode="replicate"),
    C("replicate_asym", (2, 2, 5, 7), (3, 2, 3, 3), padding=(0, 2), padding_mode="replicate"),
    C("circular_pad1", (1, 3, 6, 6), (4, 3, 3, 3), padding=1, padding_mode="circular"),
    C("circular_pad_eq_size", (1, 2, 3, 4), (2, 2, 3, 3), padding=(3, 4), padding_mode="circular"),
    C("reflect_same_even", (1, 2, 6, 6), (3, 2, 4, 2), padding="same", padding_mode="reflect"),
    C("circular_same_dil", (1, 2, 7, 7), (2, 2, 3, 3), padding="same", dilation=2, padding_mode="circular"),
    C("replicate_stride2_groups", (1, 4, 7, 7), (4, 2, 3, 3), padding=1, stride=2, groups=2,
      padding_mode="replicate"),
    C("reflect_depthwise", (1, 3, 6, 6), (3, 1, 3, 3), padding=1, groups=3, padding_mode="reflect"),
    C("zeros_explicit", (1, 3, 6, 6), (4, 3, 3, 3), padding=1, padding_mode="zeros"),
    # --- unbatched input
    C("unbatched", (3, 7, 7), (4, 3, 3, 3), padding=1),
    C("unbatched_reflect_s2", (2, 8, 9), (3, 2, 3, 2), stride=2, padding=1, padding_mode="reflect"),
    C("unbatched_depthwise", (4, 6, 6), (4, 1, 3, 3), groups=4, padding=1),
    # --- tiny and degenerate spatial sizes
    C("input_1x1_k1", (2, 3, 1, 1), (4, 3, 1, 1)),
    C("input_h1_k1x3", (1, 3, 1, 9), (2, 3, 1, 3), padding=(0, 1)),
    C("kernel_7x1", (1, 2, 9, 4), (3, 2, 7, 1), padding=(3, 0)),
    C("wino_in1x1_pad1", (1, 2, 1, 1), (3, 2, 3, 3), padding=1),
    C("wino_in2x2_pad3", (1, 2, 2, 2), (2, 2, 3, 3), padding=3),
    C("depthwise_ow41_s2", (1, 3, 5, 81), (3, 1, 3, 3), groups=3, stride=2, padding=1),
    # 3x3 stride 2 on even/odd column planes: both parities of the left pad, dilations
    # that land taps on either plane, stride 2 along one axis only, 1-2 columns
    C("depthwise_s2_pad0_odd", (1, 3, 11, 13), (3, 1, 3, 3), groups=3, stride=2),
    C("depthwise_s2_dil3_pad2", (2, 2, 14, 15), (4, 1, 3, 3), groups=2, stride=2, padding=2, dilation=3),
    C("depthwise_s12_dil2", (1, 3, 9, 10), (3, 1, 3, 3), groups=3, stride=(1, 2), padding=(1, 2), dilation=2),
    C("depthwise_s2_narrow", (1, 2, 6, 2), (2, 1, 3, 3), groups=2, stride=2, padding=1),
    C("depthwise_s2_one_column", (1, 2, 5, 1), (2, 1, 3, 3), groups=2, stride=2, padding=1),
    # --- value ranges, NaN and infinities
    C("big_values", (1, 3, 8, 8), (4, 3, 3, 3), padding=1, fill="big"),
    C("nan_input", (1, 3, 8, 8), (4, 3, 3, 3), padding=1, fill="nan"),
    C("inf_input", (1, 3, 8, 8), (4, 3, 3, 3), padding=1, fill="inf"),
    C("nan_inf_input_1x1", (1, 4, 6, 6), (3, 4, 1, 1), fill="nan_inf"),
    C("nan_input_depthwise", (1, 3, 8, 8), (3, 1, 3, 3), groups=3, padding=1, fill="nan"),
    # --- a couple of medium cases (the paths taken for real layer sizes)
    C("medium_3x3_c32_28", (2, 32, 28, 28), (32, 32, 3, 3), padding=1),
    C("medium_3x3_c16_s2_20", (1, 16, 20, 20), (24, 16, 3, 3), stride=2, padding=1),
    C("medium_depthwise_c32", (1, 32, 20, 20), (32, 1, 3, 3), groups=32, padding=1),
    C("medium_depthwise_banded", (1, 2, 40, 1200), (2, 1, 3, 3), groups=2, padding=1),
]

P = PoolCase
POOL_CASES = [
    # --- max
    P("max_k2s2", "max", (2, 3, 8, 8), 2),
    P("max_k3s2p1", "max", (1, 3, 9, 9), 3, 2, 1),
    P("max_k3s1p1", "max", (1, 2, 6, 7), 3, 1, 1),
    P("max_odd_input_floor", "max", (1, 2, 7, 7), 2),
    P("max_k2x3_s1x2", "max", (1, 3, 7, 9), (2, 3), (1, 2)),
    P("max_pad_1x0", "max", (1, 2, 6, 6), (3, 2), (2, 1), (1, 0)),
    P("max_dilation2", "max", (1, 2, 9, 9), 3, 1, 0, 2),
    P("max_dilation2_pad1", "max", (1, 2, 8, 8), 3, 2, 1, 2),
    P("max_dilation_2x3_ceil", "max", (1, 2, 9, 10), (2, 3), (2, 2), 1, (2, 3), True),
    P("max_empty_window_dilated", "max", (1, 2, 2, 2), 2, 1, 1, 3),
    P("max_ceil_last_window", "max", (1, 2, 5, 5), 2, 2, 0, 1, True),
    P("max_ceil_drop_window_in_pad", "max", (1, 2, 5, 5), 3, 3, 1, 1, True),
    P("max_ceil_drop_2", "max", (1, 2, 5, 7), 2, 3, 1, 1, True),
    P("max_ceil_no_effect", "max", (1, 2, 6, 6), 2, 2, 0, 1, True),
    P("max_stride_gt_kernel", "max", (1, 2, 10, 10), 2, 3),
    P("max_global", "max", (2, 3, 5, 6), (5, 6)),
    P("max_k1", "max", (1, 2, 4, 4), 1),
    P("max_channels1", "max", (1, 1, 6, 6), 2),
    P("max_channels13_batch5", "max", (5, 13, 6, 6), 3, 2, 1),
    P("max_channels17_batch3", "max", (3, 17, 5, 5), 2, 1),
    P("max_unbatched", "max", (3, 6, 6), 3, 2, 1),
    P("max_ties_ints", "max", (2, 3, 8, 8), 3, 1, 1, fill="ints"),
    P("max_ties_const", "max", (1, 2, 6, 6), 3, 2, 1, fill="const"),
    P("max_nan", "max", (2, 3, 8, 8), 3, 1, 1, fill="nan"),
    P("max_nan_many_per_window", "max", (1, 4, 9, 9), 4, 2, 2, fill="nan"),
    P("max_inf", "max", (2, 3, 8, 8), 2, 1, fill="inf"),
    P("max_nan_inf", "max", (1, 3, 8, 8), 3, 2, 1, fill="nan_inf"),
    P("max_all_neginf", "max", (1, 2, 6, 6), 3, 2, 1, fill="neginf"),
    P("max_ceil_kernel_exceeds_input", "max", (1, 2, 2, 2), 3, 2, 0, 1, True),
    P("max_wide_row", "max", (1, 2, 3, 70), (2, 5), (1, 2), (1, 2)),
    P("max_wide_k7_dilated", "max", (1, 2, 4, 67), (1, 7), 1, (0, 3), (1, 2)),
    P("max_h1", "max", (1, 2, 1, 9), (1, 3), 2),
    P("max_medium", "max", (2, 16, 32, 32), 3, 2, 1),
    # --- avg
    P("avg_k2s2", "avg", (2, 3, 8, 8), 2),
    P("avg_k3s2p1_incl", "avg", (1, 3, 9, 9), 3, 2, 1),
    P("avg_k3s2p1_excl", "avg", (1, 3, 9, 9), 3, 2, 1, count_include_pad=False),
    P("avg_k3s1p1_excl", "avg", (1, 2, 6, 7), 3, 1, 1, count_include_pad=False),
    P("avg_k2x3_s1x2_p1x1", "avg", (1, 2, 7, 9), (2, 3), (1, 2), 1),
    P("avg_pad_0x1_excl", "avg", (1, 2, 6, 6), (3, 3), (2, 1), (0, 1), count_include_pad=False),
    P("avg_ceil_last_window_incl", "avg", (1, 2, 5, 5), 2, 2, 0, ceil_mode=True),
    P("avg_ceil_past_pad_incl", "avg", (1, 2, 6, 6), 3, 2, 1, ceil_mode=True),
    P("avg_ceil_past_pad_excl", "avg", (1, 2, 6, 6), 3, 2, 1, ceil_mode=True, count_include_pad=False),
    P("avg_ceil_drop_window_in_pad", "avg", (1, 2, 5, 5), 3, 3, 1, ceil_mode=True),
    P("avg_ceil_k4s3p2", "avg", (1, 2, 8, 9), 4, 3, 2, ceil_mode=True),
    P("avg_divisor_override", "avg", (1, 3, 7, 7), 3, 2, 1, divisor_override=4),
    P("avg_divisor_override_ceil", "avg", (1, 2, 6, 6), 3, 2, 1, ceil_mode=True, divisor_override=7),
    P("avg_divisor_override_neg", "avg", (1, 2, 6, 6), 2, divisor_override=-3),
    P("avg_global", "avg", (2, 3, 5, 6), (5, 6)),
    P("avg_k1", "avg", (1, 2, 4, 4), 1),
    P("avg_stride_gt_kernel", "avg", (1, 2, 10, 10), 2, 3),
    P("avg_channels13_batch5", "avg", (5, 13, 6, 6), 3, 2, 1),
    P("avg_channels17_batch4", "avg", (4, 17, 5, 5), 2, 1, count_include_pad=False),
    P("avg_unbatched", "avg", (3, 6, 6), 3, 2, 1),
    P("avg_nan", "avg", (2, 3, 8, 8), 3, 1, 1, fill="nan"),
    P("avg_inf", "avg", (2, 3, 8, 8), 2, 1, fill="inf"),
    P("avg_big", "avg", (1, 3, 8, 8), 3, 2, 1, fill="big"),
    P("avg_ceil_kernel_exceeds_input", "avg", (1, 2, 2, 2), 3, 2, 0, ceil_mode=True),
    P("avg_wide_row_excl", "avg", (1, 2, 3, 70), (2, 5), (1, 3), (1, 2), count_include_pad=False),
    P("avg_w1", "avg", (1, 2, 9, 1), (3, 1), (2, 1), (1, 0)),
    P("avg_medium", "avg", (2, 16, 32, 32), 3, 2, 1),
]

MAX_CASES = [c for c in POOL_CASES if c.op == "max"]
AVG_CASES = [c for c in POOL_CASES if c.op == "avg"]

assert len({c.id for c in CONV_CASES}) == len(CONV_CASES)
assert len({c.id for c in POOL_CASES}) == len(POOL_CASES)


def winograd_expected_ok(case):
    """What Winograd F(m x m, 3 x 3) should accept, stated independently of the engine:
    3x3, stride 1, and dilation 1, or a dilation d whose top/left zero padding are
    multiples of d (run as d_h*d_w ordinary convolutions of the polyphase components,
    each padded by pad/d). A non-zero padding mode is applied before the kernel, which
    then sees no padding at all."""
    import reference as ref
    kh, kw = case.w[2], case.w[3]
    stride = case.stride if isinstance(case.stride, tuple) else (case.stride, case.stride)
    dil = case.dilation if isinstance(case.dilation, tuple) else (case.dilation, case.dilation)
    if (kh, kw) != (3, 3) or stride != (1, 1):
        return False
    if case.padding_mode != "zeros":
        return True
    top, _, left, _ = ref.conv_pads(case.padding, (kh, kw), dil)
    return top % dil[0] == 0 and left % dil[1] == 0


def is_dilated(case):
    return case.dilation not in (1, (1, 1))
