"""Bad input raises ValueError or TypeError with a message naming the problem; unusual
but valid arrays (non-contiguous, read-only, big-endian, empty batch) work."""
import numpy as np
import pytest

import engine
import engine.functional as F

import reference as ref

pytestmark = pytest.mark.usefixtures("plans_off")

f32 = np.float32


def X(*shape, dtype=f32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


def conv(x=None, w=None, b=None, **kw):
    x = X(1, 3, 8, 8) if x is None else x
    w = X(4, 3, 3, 3) if w is None else w
    return lambda: F.conv2d(x, w, b, **kw)


# (id, call, exception type, regex the message must match (case-insensitive))
CONV_BAD = [
    ("ndim_2d_input", conv(x=X(8, 8)), ValueError, r"3-D|4-D|shape"),
    ("ndim_5d_input", conv(x=X(1, 1, 3, 8, 8)), ValueError, r"3-D|4-D|shape"),
    ("ndim_3d_weight", conv(w=X(4, 3, 3)), ValueError, r"weight"),
    ("channel_mismatch", conv(x=X(1, 5, 8, 8)), ValueError, r"channels"),
    ("channel_mismatch_unbatched", conv(x=X(2, 8, 8)), ValueError, r"channels"),
    ("bias_length", conv(b=X(3)), ValueError, r"bias"),
    ("bias_2d", conv(b=X(4, 1)), ValueError, r"bias"),
    ("bias_dtype", conv(b=X(4, dtype=np.float64)), TypeError, r"bias|dtype"),
    ("bias_list", conv(b=[0.0, 0.0, 0.0, 0.0]), TypeError, r"bias|ndarray"),
    ("groups_not_dividing_in", conv(x=X(1, 3, 8, 8), w=X(4, 1, 3, 3), groups=2), ValueError, r"groups|channels"),
    ("groups_not_dividing_out", conv(x=X(1, 4, 8, 8), w=X(3, 2, 3, 3), groups=2), ValueError, r"groups"),
    ("groups_zero", conv(groups=0), ValueError, r"groups"),
    ("groups_float", conv(groups=1.5), TypeError, r"groups"),
    ("kernel_zero", conv(w=X(4, 3, 0, 3)), ValueError, r"kernel"),
    ("stride_zero", conv(stride=0), ValueError, r"stride"),
    ("stride_negative", conv(stride=(1, -1)), ValueError, r"stride"),
    ("dilation_zero", conv(dilation=0), ValueError, r"dilation"),
    ("padding_negative", conv(padding=-1), ValueError, r"negative|padding"),
    ("padding_negative_pair", conv(padding=(0, -2)), ValueError, r"negative|padding"),
    ("stride_float", conv(stride=1.5), TypeError, r"stride"),
    ("padding_triple", conv(padding=(1, 1, 1)), ValueError, r"padding"),
    ("kernel_larger_than_input", conv(x=X(1, 3, 2, 8)), ValueError, r"kernel"),
    ("dilated_kernel_larger_than_input", conv(x=X(1, 3, 4, 4), dilation=2), ValueError, r"kernel"),
    ("same_with_stride", conv(padding="same", stride=2), ValueError, r"same.*stride|stride.*same"),
    ("unknown_padding_string", conv(padding="full"), ValueError, r"padding"),
    ("unknown_padding_mode", conv(padding=1, padding_mode="mirror"), ValueError, r"padding_mode"),
    ("unknown_algorithm", conv(algorithm="fft"), ValueError, r"algorithm|fft"),
    ("algorithm_not_str", conv(algorithm=3), TypeError, r"algorithm"),
    ("reflect_pad_eq_size", conv(x=X(1, 3, 3, 8), padding=3, padding_mode="reflect"), ValueError, r"reflect"),
    ("reflect_pad_gt_width", conv(x=X(1, 3, 8, 2), padding=(1, 2), padding_mode="reflect"), ValueError, r"reflect"),
    ("circular_pad_gt_size", conv(x=X(1, 3, 3, 8), padding=4, padding_mode="circular"), ValueError, r"circular"),
    ("int_input", conv(x=np.ones((1, 3, 8, 8), dtype=np.int32)), TypeError, r"dtype|int32"),
    ("bool_input", conv(x=np.ones((1, 3, 8, 8), dtype=bool)), TypeError, r"dtype|bool"),
    ("complex_input", conv(x=np.ones((1, 3, 8, 8), dtype=np.complex64)), TypeError, r"dtype|complex"),
    ("float16_input", conv(x=np.ones((1, 3, 8, 8), dtype=np.float16), w=X(4, 3, 3, 3, dtype=np.float16)),
     TypeError, r"dtype|float16"),
    ("int_weight", conv(w=np.ones((4, 3, 3, 3), dtype=np.int64)), TypeError, r"dtype|int64"),
    ("mixed_f32_input_f64_weight", conv(w=X(4, 3, 3, 3, dtype=np.float64)), TypeError, r"dtype"),
    ("mixed_f64_input_f32_weight", conv(x=X(1, 3, 8, 8, dtype=np.float64)), TypeError, r"dtype"),
    ("list_input", conv(x=np.ones((1, 3, 8, 8)).tolist(), w=np.ones((4, 3, 3, 3))), TypeError, r"ndarray|list"),
    ("list_weight", conv(w=np.ones((4, 3, 3, 3)).tolist()), TypeError, r"ndarray|list"),
    ("conv_zero_height_input", conv(x=np.zeros((1, 3, 0, 8), dtype=f32)), ValueError, r"empty|shape"),
    ("conv_zero_out_channels", conv(w=np.zeros((0, 3, 3, 3), dtype=f32)), ValueError, r"channels"),
    ("winograd_f4_on_5x5", conv(w=X(4, 3, 5, 5), algorithm="winograd_f4x3"), ValueError, r"winograd_f4x3"),
    ("winograd_f2_strided", conv(stride=2, algorithm="winograd_f2x3"), ValueError, r"winograd_f2x3"),
    # dilation 2 runs through the polyphase split only with pads that are multiples of 2
    ("winograd_f6_dilated_pad_not_multiple", conv(dilation=2, padding=1, algorithm="winograd_f6x3"),
     ValueError, r"winograd_f6x3.*multiples of the dilation"),
]


def _needs_missing_winograd(case_id):
    return case_id.startswith("winograd") and "winograd_f4x3" not in engine.algorithms()


@pytest.mark.parametrize("call, exc, pattern", [c[1:] for c in CONV_BAD], ids=[c[0] for c in CONV_BAD])
def test_conv_bad_input(call, exc, pattern, request):
    if _needs_missing_winograd(request.node.callspec.id):
        pytest.skip("Winograd not built")
    with pytest.raises(exc, match=f"(?i){pattern}"):
        call()


def test_winograd_errors_say_why():
    if "winograd_f4x3" not in engine.algorithms():
        pytest.skip("Winograd not built")
    with pytest.raises(ValueError, match=r"(?i)3x3"):
        conv(w=X(4, 3, 5, 5), algorithm="winograd_f4x3")()
    with pytest.raises(ValueError, match=r"(?i)stride"):
        conv(stride=2, algorithm="winograd_f4x3")()
    with pytest.raises(ValueError, match=r"(?i)padding to be multiples of the dilation.*top 1, left 1"):
        conv(dilation=2, padding=1, algorithm="winograd_f4x3")()


def mp(x=None, *args, **kw):
    x = X(1, 2, 8, 8) if x is None else x
    return lambda: F.max_pool2d(x, *args, **kw)


def ap(x=None, *args, **kw):
    x = X(1, 2, 8, 8) if x is None else x
    return lambda: F.avg_pool2d(x, *args, **kw)


POOL_BAD = [
    ("max_ndim_2d", mp(X(8, 8), 2), ValueError, r"3-D|4-D|shape"),
    ("avg_ndim_5d", ap(X(1, 1, 2, 8, 8), 2), ValueError, r"3-D|4-D|shape"),
    ("max_kernel_zero", mp(None, 0), ValueError, r"kernel"),
    ("avg_kernel_negative", ap(None, (2, -1)), ValueError, r"kernel"),
    ("max_stride_zero", mp(None, 2, 0), ValueError, r"stride"),
    ("avg_stride_negative", ap(None, 2, -2), ValueError, r"stride"),
    ("max_dilation_zero", mp(None, 2, 2, 0, 0), ValueError, r"dilation"),
    ("max_padding_negative", mp(None, 3, 1, -1), ValueError, r"negative|padding"),
    ("avg_padding_negative", ap(None, 3, 1, (0, -1)), ValueError, r"negative|padding"),
    ("max_pad_over_half_kernel", mp(None, 3, 1, 2), ValueError, r"half"),
    ("avg_pad_over_half_kernel", ap(None, (2, 4), 1, (2, 1)), ValueError, r"half"),
    ("max_empty_output", mp(X(1, 2, 2, 2), 3), ValueError, r"output size|too small"),
    ("max_empty_output_dilated", mp(X(1, 2, 4, 4), 3, 1, 0, 2), ValueError, r"output size|too small"),
    ("avg_empty_output", ap(X(1, 2, 8, 1), 2), ValueError, r"output size|too small"),
    ("avg_divisor_override_zero", ap(None, 2, divisor_override=0), ValueError, r"divisor_override"),
    ("avg_divisor_override_float", ap(None, 2, divisor_override=1.5), TypeError, r"divisor_override"),
    ("max_int_input", mp(np.ones((1, 2, 8, 8), dtype=np.int64), 2), TypeError, r"dtype|int64"),
    ("avg_bool_input", ap(np.ones((1, 2, 8, 8), dtype=bool), 2), TypeError, r"dtype|bool"),
    ("max_complex_input", mp(np.ones((1, 2, 8, 8), dtype=np.complex128), 2), TypeError, r"dtype|complex"),
    ("avg_float16_input", ap(np.ones((1, 2, 8, 8), dtype=np.float16), 2), TypeError, r"dtype|float16"),
    ("max_list_input", mp(np.ones((1, 2, 4, 4)).tolist(), 2), TypeError, r"ndarray|list"),
    ("avg_list_input", ap(np.ones((1, 2, 4, 4)).tolist(), 2), TypeError, r"ndarray|list"),
    ("max_zero_channels", mp(np.zeros((1, 0, 4, 4), dtype=f32), 2), ValueError, r"empty|shape"),
    ("avg_zero_height", ap(np.zeros((1, 2, 0, 4), dtype=f32), 1), ValueError, r"empty|shape"),
    ("max_return_indices_not_bool", mp(None, 2, return_indices="yes"), TypeError, r"return_indices"),
    ("avg_ceil_mode_not_bool", ap(None, 2, ceil_mode="no"), TypeError, r"ceil_mode"),
    ("max_kernel_float", mp(None, 2.0), TypeError, r"kernel"),
    ("max_kernel_triple", mp(None, (2, 2, 2)), ValueError, r"kernel"),
]


@pytest.mark.parametrize("call, exc, pattern", [c[1:] for c in POOL_BAD], ids=[c[0] for c in POOL_BAD])
def test_pool_bad_input(call, exc, pattern):
    with pytest.raises(exc, match=f"(?i){pattern}"):
        call()


LAYER_BAD = [
    ("conv_in_channels_zero", lambda: engine.Conv2d(0, 4, 3), ValueError, r"in_channels"),
    ("conv_groups_not_dividing", lambda: engine.Conv2d(3, 4, 3, groups=2), ValueError, r"groups|divisible"),
    ("conv_kernel_zero", lambda: engine.Conv2d(3, 4, 0), ValueError, r"kernel"),
    ("conv_stride_zero", lambda: engine.Conv2d(3, 4, 3, stride=0), ValueError, r"stride"),
    ("conv_dilation_negative", lambda: engine.Conv2d(3, 4, 3, dilation=-1), ValueError, r"dilation"),
    ("conv_padding_negative", lambda: engine.Conv2d(3, 4, 3, padding=-1), ValueError, r"negative|padding"),
    ("conv_same_strided", lambda: engine.Conv2d(3, 4, 3, stride=2, padding="same"), ValueError, r"same"),
    ("conv_bad_padding_string", lambda: engine.Conv2d(3, 4, 3, padding="full"), ValueError, r"padding"),
    ("conv_bad_padding_mode", lambda: engine.Conv2d(3, 4, 3, padding_mode="mirror"), ValueError, r"padding_mode"),
    ("conv_bad_algorithm", lambda: engine.Conv2d(3, 4, 3, algorithm="fft"), ValueError, r"algorithm|fft"),
    ("conv_float16_layer", lambda: engine.Conv2d(3, 4, 3, dtype=np.float16), TypeError, r"dtype|float16"),
    ("maxpool_pad_over_half", lambda: engine.MaxPool2d(2, padding=2), ValueError, r"half"),
    ("avgpool_divisor_zero", lambda: engine.AvgPool2d(2, divisor_override=0), ValueError, r"divisor_override"),
    ("conv_layer_wrong_input_channels", lambda: engine.Conv2d(3, 4, 3, seed=0)(X(1, 2, 8, 8)), ValueError,
     r"channels"),
    ("conv_layer_wrong_input_dtype", lambda: engine.Conv2d(3, 4, 3, seed=0)(X(1, 3, 8, 8, dtype=np.float64)),
     TypeError, r"dtype"),
    ("conv_layer_list_input", lambda: engine.Conv2d(3, 4, 3, seed=0)(np.ones((1, 3, 8, 8)).tolist()), TypeError,
     r"ndarray|list"),
    ("conv_layer_bad_weight_shape", lambda: setattr(engine.Conv2d(3, 4, 3, seed=0), "weight", X(4, 3, 2, 2)),
     ValueError, r"weight|shape"),
    ("conv_layer_int_weight", lambda: setattr(engine.Conv2d(3, 4, 3, seed=0), "weight",
                                             np.ones((4, 3, 3, 3), dtype=np.int32)), TypeError, r"dtype|weight"),
    ("conv_layer_bad_bias_shape", lambda: setattr(engine.Conv2d(3, 4, 3, seed=0), "bias", X(3)),
     ValueError, r"bias"),
    ("explain_bad_shape", lambda: engine.explain(engine.Conv2d(3, 4, 3, seed=0), (8, 8)), ValueError,
     r"input_shape|shape"),
    ("explain_not_a_layer", lambda: engine.explain("conv", (1, 3, 8, 8)), TypeError, r"layer|dict"),
    ("explain_dict_missing_key", lambda: engine.explain(dict(in_channels=3, kernel_size=3), (1, 3, 8, 8)),
     ValueError, r"out_channels"),
    ("explain_dict_unknown_key", lambda: engine.explain(dict(in_channels=3, out_channels=4, kernel_size=3, foo=1),
                                                        (1, 3, 8, 8)), ValueError, r"foo|unknown"),
    ("set_num_threads_zero", lambda: engine.set_num_threads(0), ValueError, r"positive"),
    ("set_num_threads_float", lambda: engine.set_num_threads(1.5), TypeError, r"int"),
]


@pytest.mark.parametrize("call, exc, pattern", [c[1:] for c in LAYER_BAD], ids=[c[0] for c in LAYER_BAD])
def test_layer_bad_input(call, exc, pattern):
    with pytest.raises(exc, match=f"(?i){pattern}"):
        call()


def test_bad_input_leaves_no_damage():
    """After many rejected calls the engine still computes correctly."""
    for _, call, exc, _ in CONV_BAD + POOL_BAD:
        try:
            call()
        except (ValueError, TypeError):
            pass
    x, w = X(1, 3, 6, 6), X(2, 3, 3, 3)
    ref.assert_close(F.conv2d(x, w, padding=1), ref.conv2d(x, w, padding=1), 1e-4)


# ------------------------------------------------------ unusual but valid arrays
def _variants(rng):
    base = rng.standard_normal((2, 3, 9, 10))
    transposed = np.ascontiguousarray(base.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    sliced = rng.standard_normal((3, 6, 20, 21))[1:, ::2, 1::2, ::2]
    readonly = base.copy()
    readonly.flags.writeable = False
    buf = bytearray(base.nbytes + 1)               # float data at an odd address
    unaligned = np.frombuffer(buf, dtype=base.dtype, count=base.size, offset=1).reshape(base.shape)
    unaligned[...] = base
    return {
        "transposed": transposed,
        "unaligned": unaligned,
        "reversed": base[:, ::-1, ::-1, ::-1],
        "broadcast": np.broadcast_to(base[:1, :, :, :1], (2, 3, 9, 10)),
        "sliced": sliced,
        "readonly": readonly,
        "fortran": np.asfortranarray(base),
        "big_endian_f4": base.astype(">f4"),
        "big_endian_f8": base.astype(">f8"),
    }


@pytest.mark.parametrize("kind", ["transposed", "sliced", "readonly", "fortran", "unaligned", "reversed",
                                  "broadcast", "big_endian_f4", "big_endian_f8"])
def test_unusual_arrays_give_correct_results(kind, rng):
    x = _variants(rng)[kind]
    if kind in ("transposed", "sliced", "fortran", "reversed", "broadcast"):
        assert not x.flags.c_contiguous
    if kind == "unaligned":
        assert not x.flags.aligned
    x_before = np.array(x, copy=True)
    itemsize = x.dtype.itemsize
    wdtype = x.dtype                    # big-endian weights too
    w = rng.standard_normal((4, 3, 3, 2)).astype(wdtype)
    w_nc = np.asfortranarray(w) if kind == "fortran" else w
    if kind == "readonly":
        w_nc = w.copy()
        w_nc.flags.writeable = False
    b = rng.standard_normal(4).astype(wdtype)
    tol = 1e-5 if itemsize == 4 else 1e-12
    expected = ref.conv2d(x, w, b, padding=1)
    for name in engine.algorithms():
        if name.startswith("winograd"):
            continue                    # 3x2 kernel: Winograd checked below
        out = F.conv2d(x, w_nc, b, padding=1, algorithm=name)
        assert out.dtype.itemsize == itemsize and out.dtype.kind == "f"
        ref.assert_close(out, expected, tol, what=f"{kind}/{name}")
    out = F.conv2d(x, w_nc, b, padding=1, padding_mode="reflect")
    ref.assert_close(out, ref.conv2d(x, w, b, padding=1, padding_mode="reflect"), 1e-4, what="reflect")
    w3 = rng.standard_normal((4, 3, 3, 3)).astype(wdtype)
    for name in [n for n in engine.algorithms() if n.startswith("winograd")]:
        out = F.conv2d(x, w3, None, padding=1, algorithm=name)
        ref.assert_close(out, ref.conv2d(x, w3, None, padding=1), 1e-3, what=f"{kind}/{name}")
    v, i = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    ev, ei = ref.max_pool2d(x, 3, 2, 1)
    np.testing.assert_array_equal(v.astype(np.float64), ev)
    np.testing.assert_array_equal(i, ei)
    a = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    ref.assert_close(a, ref.avg_pool2d(x, 3, 2, 1, count_include_pad=False), 1e-5)
    np.testing.assert_array_equal(x, x_before)       # the engine never writes its input


def test_float64_in_float64_out(rng):
    x = rng.standard_normal((1, 2, 6, 6))
    w = rng.standard_normal((3, 2, 3, 3))
    assert F.conv2d(x, w).dtype == np.float64
    assert F.max_pool2d(x, 2).dtype == np.float64
    assert F.avg_pool2d(x, 2).dtype == np.float64
    assert engine.Conv2d(2, 3, 3, dtype=np.float64, seed=0)(x).dtype == np.float64


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_empty_batch_everywhere(dtype):
    x = np.zeros((0, 4, 10, 12), dtype=dtype)
    w = np.zeros((6, 2, 3, 3), dtype=dtype)
    out = F.conv2d(x, w, None, stride=2, padding=1, groups=2, padding_mode="circular")
    assert out.shape == (0, 6, 5, 6) and out.dtype == np.dtype(dtype)
    assert F.max_pool2d(x, 2).shape == (0, 4, 5, 6)
    assert F.avg_pool2d(x, 3, 3, ceil_mode=True).shape == (0, 4, 4, 4)
    layer = engine.Conv2d(4, 6, 3, padding="same", dtype=dtype, seed=1)
    assert layer(x).shape == (0, 6, 10, 12)


# ------------------------------------------------ limits and the other entry points
def test_masked_array_is_refused():
    x = np.ma.masked_array(X(1, 2, 5, 5), mask=False)
    with pytest.raises(TypeError, match="masked"):
        F.max_pool2d(x, 2)


@pytest.mark.parametrize("call", [
    conv(stride=2 ** 31), conv(dilation=2 ** 40), conv(padding=2 ** 31),
    lambda: F.max_pool2d(X(1, 1, 4, 4), 2, stride=2 ** 31),
    lambda: F.avg_pool2d(X(1, 1, 4, 4), 2, divisor_override=2 ** 64),
])
def test_out_of_range_ints_are_value_errors(call):
    with pytest.raises(ValueError, match="out of range"):
        call()


@pytest.mark.parametrize("make", [
    lambda: engine.MaxPool2d(2, return_indices="no"), lambda: engine.MaxPool2d(2, ceil_mode=None),
    lambda: engine.AvgPool2d(2, count_include_pad="yes"),
])
def test_pool_layer_flags_must_be_bools(make):
    with pytest.raises(TypeError, match="must be a bool"):
        make()


@pytest.mark.parametrize("params, shape, err, needle", [
    (dict(in_channels=4, out_channels=4, kernel_size=3, dtype="float16"), (1, 4, 8, 8), TypeError, "dtype"),
    (dict(in_channels=4, out_channels=4, kernel_size=3), (1.7, 4, 8, 8), TypeError, "ints"),
    (dict(in_channels=4, out_channels=4, kernel_size=3, groups=3), (1, 4, 8, 8), ValueError, "groups"),
])
def test_explain_bad_arguments(params, shape, err, needle):
    with pytest.raises(err, match=needle):
        engine.explain(params, shape)


def test_numpy_integers_are_ints():
    before = engine.get_num_threads()
    try:
        engine.set_num_threads(np.int64(1))
        assert engine.get_num_threads() == 1
    finally:
        engine.set_num_threads(before)
    info = engine.explain(dict(in_channels=4, out_channels=4, kernel_size=3, groups=np.int64(2)),
                          (1, 4, 8, 8))
    assert info["params"]["groups"] == 2


def test_float16_weights_are_refused():
    layer = engine.Conv2d(2, 2, 3)
    with pytest.raises(TypeError, match="float16"):
        layer.weight = np.zeros((2, 2, 3, 3), np.float16)


def test_big_endian_input_through_linear_and_batchnorm():
    x = X(2, 3, 4, 4)
    bn = engine.BatchNorm2d(3)
    np.testing.assert_array_equal(bn(x.astype(">f4")), bn(x))
    lin = engine.Linear(4, 5, seed=0)
    np.testing.assert_array_equal(lin(x.astype(">f4")), lin(x))
