"""Which algorithm computes a convolution or a pooling: forced > plan entry > heuristic.

``choose`` returns a ``Choice`` (algorithm name, where the decision came from, why).
Layers cache their operator per input shape, so this runs once per layer and shape;
the functional API calls it on every call (it is a few dictionary look-ups). Pooling
has one algorithm ("pool"), so its choice never consults the plan.
"""
from dataclasses import dataclass, field

from . import isa as _isa
from . import registry as _registry
from . import plan as _plan
from .shapes import PoolParams

POOL_REASON = "pooling has one kernel per op"


@dataclass(frozen=True)
class Choice:
    algorithm: str
    source: str          # "forced" | "plan" | "heuristic"
    reason: str
    params: dict = field(default_factory=dict)   # kernel parameters ({}: automatic)

    def as_dict(self):
        return {"algorithm": self.algorithm, "source": self.source, "reason": self.reason,
                "kernel_params": dict(self.params)}


# Winograd's rule for the heuristic, per micro-kernel ISA (engine.isa): the least
# channels per group in and out, the least output size, and the batch's output pixels
# per channel from which F(4x4) beats F(2x2). Grouped layers need more channels per
# group (ResNeXt's 8 per group: im2col 0.7 ms, F(4x4) 1.2-1.5 ms). Measured with
# benchmarks/bench_layers.py and small-layer sweeps at 2 threads on a Sapphire Rapids,
# AVX-512 and capped to AVX2 (CONVTUNE_ISA=avx2, Cython kernels built with
# CONVTUNE_MARCH=x86-64-v3): the same thresholds hold for both. On baseline the float32 GEMM has no vector kernel, so 3x3
# float32 layers stay on im2col (BLAS); float64 Winograd runs on BLAS on every ISA.
# Dilated 3x3 stride-1 float32 layers (pads multiples of the dilation) run Winograd on
# their N*dh*dw polyphase sub-images, and the same rule applies to that sub-problem
# (sub-outputs of ceil(OH/dh) x ceil(OW/dw), batch N*dh*dw). bench_layers, 2 threads,
# medians in ms, AVX-512 (forced igemm, the default before, / F(2) / F(4) / default F(4)):
#   dilated.d2 256ch 28x28 d2, batch 1: 5.14 / 3.56 / 3.58 / 3.39 (torch 5.51, ort 4.99)
#   dilated.d4 128ch 56x56 d4, batch 1: 5.04 / 4.12 / 3.63 / 3.46 (torch 4.53, ort 5.22)
#   dilated.d2, batch 8: 35.9 / 24.2 / 19.1 / 17.3 (torch 35.3, ort 32.8)
#   dilated.d4, batch 8: 50.6 / 43.3 / 33.9 / 35.1 (torch 41.2, ort 46.2)
# AVX2 (capped, --isa avx2; im2col the default before, igemm / im2col / F(4) / default
# F(4)), the quietest of several runs (the other core was often busy):
#   dilated.d2, batch 1: 13.1 / 8.51 / 8.55 / 6.97 (torch 6.28, ort 7.01)
#   dilated.d4, batch 1: 11.5 / 8.60 / 5.58 / 5.44 (torch 4.99, ort 5.97)
#   dilated.d2, batch 8: 93.8 / 52.1 / 34.5 / 35.3 (torch 40.0, ort 39.0)
#   dilated.d4, batch 8: 126 / 69.6 / 51.2 / 46.3 (torch 40.9, ort 47.1)
# (F(4) ahead of im2col in every run, also the disturbed ones.)
# float64 (BLAS GEMMs) had a single undisturbed run (F(4) 8.2 ms vs im2col 11.8 on d2,
# 9.8 vs 14.7 on d4, batch 1, AVX-512): too little to move it, it stays on im2col.
# F(6x6) instead of F(4x4) on large planes with few channels, where the transforms'
# memory traffic outweighs the GEMM (F(6x6) moves 64/36 transformed values per output,
# F(4x4) 36/16): output planes of at least f6_min_plane pixels per image, at most
# f6_max_channels per group in and out. F(6x6) / F(4x4) time, 2 threads, batch 1:
# VGG conv1_2 (64ch 224x224) 0.80-0.92 and conv2_2 (128ch 112x112) 0.85-0.97 on an AMD
# EPYC Zen 4 (bench_layers and A/B runs), 0.85-0.94 on the Sapphire Rapids (bench_layers);
# 256 channels at 56x56 1.0-1.1 and 64 at 56x56 1.0-1.1, where F(4x4) stays.
# Few channels: Winograd's transforms cost per tile in proportion to C_in + C_out, its
# GEMM saves in proportion to C_in * C_out, so it needs their harmonic mean
# 2*C_in*C_out / (C_in + C_out) to reach min_channel_hmean. F(4x4) / igemm time, Zen 4,
# engine layers interleaved in one process, 2 threads, batch 1 / 8, AVX-512 (AVX2 tiles
# capped): below 16, 8->8 at 56x56 1.30 / 1.50 (1.39 / 1.25); the seed CNN's 10->16 at
# 31x31 1.01 / 1.20 (1.06 / 1.15); 8->64 at 56x56 1.42 / 1.75 (1.43 / 2.84); 64->8 1.15 /
# 1.17 (0.96 / 1.11). At 16, 16->16 at 32x32 0.86 / 1.08 (1.06 / 1.03), at 56x56 0.92 /
# 0.95 (1.00 / 0.95); above, 12->128 at 28x28 0.88 (0.94), 16->32 at 56x56 batch 8 0.83
# (0.89), 20->20 at 28x28 batch 8 0.76 (0.73).
_RULE = {"min_channels": 8, "min_channels_grouped": 16, "min_channel_hmean": 16,
         "min_output": 6, "f4_min_pixels": 14 * 14,
         "f6_min_plane": 112 * 112, "f6_max_channels": 128}
WINOGRAD_RULE = {"avx512": dict(_RULE), "avx2": dict(_RULE), "baseline": dict(_RULE, float32=False)}


# The implicit GEMM's rule (igemm), per ISA: float32 layers with at least this many
# output channels per group go to igemm instead of im2col (+ OpenBLAS), except, where
# "im2col_1x1" says so, 1x1 layers with fewer batch-wide output pixels (N*OH*OW) than
# its min_columns.
# Measured on the Sapphire Rapids at one thread (the other core was busy), batch 1, on
# AVX-512: igemm 1.03-1.4x faster than im2col on ResNet-50's 1x1 layers, ResNet-18's
# strided 3x3 and 7x7 stem and the dilated 3x3, and 1.05-2x on small layers down to 8
# output channels (ResNeXt's 8 per group 1.32 vs 1.38 ms, 4->8 3x3 at 56x56 0.096 vs
# 0.111 ms, 8->8 1x1 at 28x28 0.023 vs 0.047 ms); fewer than 8 were not measured; the
# padded mode then took ResNeXt's groups to 0.33 ms (im2col 0.73). Capped to AVX2
# (bench_layers --isa avx2, 2 threads, OpenBLAS held to its Haswell kernels,
# OPENBLAS_CORETYPE=Haswell): the padded mode wins ResNeXt's 8-channel groups (igemm
# 0.68 ms, im2col 1.79) and the seed CNN's 3->10 (0.035 vs 0.059) and ties the 7x7 stem
# (4.0 vs 3.9), while the gathered layers are level with OpenBLAS: 0.9-1.1x on the 1x1
# layers and the strided 3x3 (1.6 vs 1.75 ms), so those kept im2col on AVX2 then.
# After the wide gather, whole-K tiles and plain (unmasked) stores, on an AMD EPYC Zen 3
# (AVX2 only; bench_layers, 2 threads, three runs, forced igemm / im2col ms): ResNet-18's
# strided 3x3 1.12 / 1.23, 1.16 / 1.30, 0.97 / 1.23 at batch 1 and 7.4 / 8.6,
# 9.2 / 9.6, 6.3 / 8.2 at batch 8; ResNet-50's 1x1 stride-1 layers summed 8.40 / 8.59
# (two runs) at batch 1 and 52.3 / 55.1 at batch 8, but the 2048->512 at 7x7 (49
# columns at batch 1) 1.20 / 1.13, 1.59 / 1.38, 1.21 / 1.14 at batch 1, and the
# stride-2 1x1 (the downsample) 2.29 / 2.18, 3.18 / 3.20, 2.10 / 1.96 at batch 1 and
# 13.2 / 11.3, 19.9 / 15.4 at batch 8: those two stayed on im2col. With channel blocks
# of up to 2048 (igemm.MAX_MB, one gather per panel instead of two or three), forced
# igemm / im2col interleaved in one process, 2 threads: the stride-2 1x1 layers 256->512
# at 56x56, 512->1024 at 28x28 and 1024->2048 at 14x14 took 0.92, 0.90 and 0.91 of
# im2col's time at batch 1 (0.89-0.97 at one thread) and 0.86, 0.99, 0.87 at batch 8,
# so strided 1x1 layers go to igemm on AVX2 too. On AVX-512 (AMD EPYC Zen 4, engine
# layers with weights prepared once, interleaved in one process, 2 threads, ms igemm /
# im2col / torch): the 1x1 layers at 7x7, batch 1 (49 columns: 48 + 1 on NR = 48, four
# 16-float vectors of columns computed for 3.06 of outputs, where OpenBLAS vectorises
# over the output channels) 2048->512 0.667 / 0.625 / 0.664, 512->2048 0.633 / 0.613 /
# 0.618, 1024->1024 0.636 / 0.630 / 0.670; at batch 2 (98 columns) igemm is ahead,
# 1.26 / 1.31, 1.14 / 1.24, 1.16 / 1.29, and at 14x14 (196) 0.52 / 0.59.
# On baseline the scalar tile is no match for OpenBLAS.
IGEMM_RULE = {"avx512": {"min_cout": 8, "im2col_1x1": {"min_columns": 64}},
              "avx2": {"min_cout": 8, "im2col_1x1": {"min_columns": 128}},
              "baseline": None}


def _igemm_rule_allows(irule, p):
    """Whether the ISA's IGEMM_RULE entry sends float32 layer ``p`` to igemm."""
    if irule is None or p.c_out // p.groups < irule["min_cout"]:
        return False
    keep = irule.get("im2col_1x1")
    if keep is not None and p.kernel == (1, 1) and p.n * p.out_h * p.out_w < keep["min_columns"]:
        return False
    return True


def heuristic(p):
    """The documented default when neither the caller nor a plan decides.

    Measured on the reference machine (benchmarks/bench_layers.py, 2 threads):

    - depthwise (groups == C_in > 1): ``direct``, whose depthwise kernel streams each
      plane once; GEMM formulations have K = kH*kW there and waste the BLAS;
    - 3x3, stride 1, dilation 1, at least 8 channels in and out (16 per group when
      grouped) with a harmonic mean of at least 16, and an output of at least 6x6
      (``WINOGRAD_RULE``, per ISA): Winograd,
      F(4x4) when the batch holds at least 14*14 output pixels per channel, else F(2x2)
      (on a 7x7 image at batch 1 F(4x4) has 4 mostly-padded tiles and its big
      transformed weights dominate), and F(6x6) on output planes of 112x112 and more
      with at most 128 channels per group (VGG conv1_2/conv2_2: 3-20% faster than
      F(4x4); 5x its float32 error, within the default tolerance); not for float32 on
      ``baseline``;
    - the same for float32 3x3 stride-1 layers with dilation d whose top/left padding
      are multiples of d, applied to the batch of N*dh*dw polyphase sub-images Winograd
      runs for them (sub-outputs ceil(OH/dh) x ceil(OW/dw)): 1.3-2x faster than igemm
      on the dilated layers of the suite (``WINOGRAD_RULE``'s comment);
    - grouped convolutions with fewer than 4 channels per group: ``direct``;
    - float32 on AVX-512 and AVX2 with at least 8 output channels per group
      (``IGEMM_RULE``): ``igemm``, the packed-weight implicit GEMM on the micro-kernels
      (1x1, strided, dilated, grouped, the 7x7 stem, and 3x3 layers Winograd does not
      take), except 1x1 layers with fewer output pixels in the batch than 64 on
      AVX-512 (a 7x7 image at batch 1) or 128 on AVX2, where OpenBLAS is ahead;
    - everything else: ``im2col`` (a plain GEMM for 1x1 stride 1), unless a plane is
      too large for BLAS's 32-bit sizes (then ``direct``).

    Known misses (default over best forced, bench_layers at batch 1): the 3-channel
    seed.conv1 at 32x32 (igemm 0.030 ms, F(4x4) 0.024 ms: fewer than 8 input channels
    go to igemm or im2col, which win them on large images, e.g. 3->64 at 224x224 by
    2x).

    It never picks an algorithm whose tolerance exceeds the default for the dtype.
    Pooling (PoolParams): ``pool``, its only algorithm.
    """
    if isinstance(p, PoolParams):
        return "pool", POOL_REASON
    if p.is_depthwise:
        return "direct", "depthwise convolution: the direct depthwise kernel"
    cin_g, cout_g = p.c_in // p.groups, p.c_out // p.groups
    winograd = _registry.REGISTRY.get("winograd_f4x3")
    winograd_ok = winograd is not None and winograd.why_not(p) is None
    rule = WINOGRAD_RULE[_isa.active()]
    if p.dtype == "float32" and not rule.get("float32", True):
        winograd_ok = False        # its float32 GEMM has no vector kernel here; BLAS has
    # the convolution Winograd's kernel runs: the layer itself, or for a dilated layer
    # its N*dh*dw polyphase sub-images (registry.Winograd.sub_problem)
    n_s, out_h, out_w = p.n, p.out_h, p.out_w
    if p.dilation != (1, 1):
        if p.dtype != "float32":
            winograd_ok = False    # float64's split (BLAS): not measured enough yet
        elif winograd_ok:
            n_s, _, _, out_h, out_w, _, _ = winograd.sub_problem(p)
    min_channels = rule["min_channels"] if p.groups == 1 else rule["min_channels_grouped"]
    if (winograd_ok and min(cin_g, cout_g) >= min_channels
            and 2 * cin_g * cout_g >= rule["min_channel_hmean"] * (cin_g + cout_g)
            and min(out_h, out_w) >= rule["min_output"]):
        m = 4 if n_s * out_h * out_w >= rule["f4_min_pixels"] else 2
        if (out_h * out_w >= rule["f6_min_plane"] and max(cin_g, cout_g) <= rule["f6_max_channels"]
                and _registry.tolerance("winograd_f6x3", p.dtype) <= _registry.DEFAULT_TOLERANCE[p.dtype]):
            m = 6
        name = f"winograd_f{m}x3"
        if _registry.tolerance(name, p.dtype) <= _registry.DEFAULT_TOLERANCE[p.dtype]:
            if p.dilation != (1, 1):
                return name, ("dilated 3x3 stride-1 layer with enough channels and pixels: "
                              "Winograd on its polyphase sub-images")
            return name, "3x3 stride-1 layer with enough channels and pixels: Winograd"
    if p.groups > 1 and cin_g < 4:
        return "direct", f"grouped convolution with {cin_g} channel(s) per group"
    igemm = _registry.REGISTRY.get("igemm")
    irule = IGEMM_RULE[_isa.active()]
    if (p.dtype == "float32" and igemm is not None and _igemm_rule_allows(irule, p)
            and igemm.why_not(p) is None):
        return "igemm", "float32 layer with enough channels per group: packed-weight implicit GEMM"
    too_big = _registry.REGISTRY["im2col"].why_not(p)
    if too_big is not None:
        return "direct", too_big
    if p.kernel == (1, 1) and p.stride == (1, 1) and max(p.pads) == 0:
        return "im2col", "1x1 stride-1 convolution: a plain GEMM"
    return "im2col", "general convolution: im2col + GEMM"


def check_forced(name, p):
    """Validate a forced algorithm for ``p``: ValueError naming it and why not."""
    algo = _registry.get(name, "conv")
    reason = algo.why_not(p)
    if reason is not None:
        raise ValueError(f"algorithm {name!r} cannot compute this convolution: {reason}")
    return algo


def choose(p, forced=None, num_threads=None):
    """The Choice for ``p`` (ConvParams: forced > plan entry > heuristic; PoolParams:
    its one algorithm)."""
    if isinstance(p, PoolParams):
        return Choice("pool", "heuristic", POOL_REASON)
    if forced is not None:
        check_forced(forced, p)
        return Choice(forced, "forced", "algorithm= given by the caller")
    entry = _plan.lookup(p, num_threads)
    if entry is not None:
        algo = _registry.REGISTRY.get(entry.algorithm)
        if algo is not None and algo.why_not(p) is None:
            try:
                params = algo.check_params(entry.params)
                reason = entry.describe()
            except ValueError as e:  # a hand-edited or newer plan: run with automatic params
                params, reason = {}, f"{entry.describe()}; its params were ignored: {e}"
            return Choice(entry.algorithm, "plan", reason, params)
    name, reason = heuristic(p)
    return Choice(name, "heuristic", reason)
