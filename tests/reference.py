"""An independent float64 reference for conv2d, max_pool2d and avg_pool2d.

Written plainly over numpy from PyTorch's documented semantics; it shares no code with
``engine`` (no imports from it), so the engine is never checked against itself.

Layouts: input (N, C, H, W) or unbatched (C, H, W); weight (C_out, C_in/groups, kH, kW).
Everything is computed in float64 whatever the input dtype.
"""
import numpy as np

# torch padding_mode -> numpy.pad mode
NP_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pair(v):
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


# ------------------------------------------------------------------- output sizes
def conv_out_size(size, k, stride, pad_before, pad_after, dilation):
    """floor((size + pads - dilation*(k-1) - 1) / stride) + 1"""
    return (size + pad_before + pad_after - dilation * (k - 1) - 1) // stride + 1


def pool_out_size(size, k, stride, pad, dilation, ceil_mode):
    """Floor (or ceil) of the convolution formula; with ceil_mode the last window must
    start inside the input or the left padding, else it is dropped."""
    span = size + 2 * pad - dilation * (k - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1        # ceil division
        if (out - 1) * stride >= size + pad:
            out -= 1
    else:
        out = span // stride + 1
    return out


def conv_pads(padding, kernel, dilation):
    """(top, bottom, left, right). 'same': total d*(k-1), left = total//2, right the rest."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        th = dilation[0] * (kernel[0] - 1)
        tw = dilation[1] * (kernel[1] - 1)
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    ph, pw = pair(padding)
    return (ph, ph, pw, pw)


# -------------------------------------------------------------------- convolution
@np.errstate(invalid="ignore", over="ignore")
def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    unbatched = x.ndim == 3
    if unbatched:
        x = x[None]
    n, c, h, wd = x.shape
    c_out, c_g, kh, kw = w.shape
    assert c_g * groups == c and c_out % groups == 0
    sh, sw = pair(stride)
    dh, dw = pair(dilation)
    top, bottom, left, right = conv_pads(padding, (kh, kw), (dh, dw))
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode=NP_PAD_MODE[padding_mode])
    oh = conv_out_size(h, kh, sh, top, bottom, dh)
    ow = conv_out_size(wd, kw, sw, left, right, dw)
    out = np.zeros((n, c_out, oh, ow))
    o_g = c_out // groups
    for g in range(groups):
        xg = xp[:, g * c_g:(g + 1) * c_g]
        wg = w[g * o_g:(g + 1) * o_g]
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                           j * dw:j * dw + sw * (ow - 1) + 1:sw]
                out[:, g * o_g:(g + 1) * o_g] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    if b is not None:
        out += np.asarray(b, dtype=np.float64)[None, :, None, None]
    return out[0] if unbatched else out


# ------------------------------------------------------------------------ pooling
def _pool_window(kernel_size, stride, padding, dilation):
    k = pair(kernel_size)
    s = k if stride is None else pair(stride)
    return k, s, pair(padding), pair(dilation)


def _first_tap(start, d):
    """First tap start + i*d that is >= 0 (PyTorch's `while (ih0 < 0) ih0 += dilation`)."""
    return np.where(start < 0, start + ((-start + d - 1) // d) * d, start)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """(values, indices). Padding is -inf; taps visited rows outer, columns inner; a tap
    replaces the running max when greater or NaN: ties keep the first maximum, NaN
    propagates with the last NaN's index. The index is ih*W + iw within the plane; the
    starting index is the window's first in-input tap (so an all -inf window points there)."""
    x = np.asarray(x, dtype=np.float64)
    unbatched = x.ndim == 3
    if unbatched:
        x = x[None]
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pool_window(kernel_size, stride, padding, dilation)
    oh = pool_out_size(h, kh, sh, ph, dh, ceil_mode)
    ow = pool_out_size(w, kw, sw, pw, dw, ceil_mode)
    rows0 = np.arange(oh) * sh - ph          # window start rows (may be negative)
    cols0 = np.arange(ow) * sw - pw
    best = np.full((n, c, oh, ow), -np.inf)
    r_first = _first_tap(rows0, dh)
    c_first = _first_tap(cols0, dw)
    best_idx = np.broadcast_to((r_first[:, None] * w + c_first[None, :]), (n, c, oh, ow)).copy()
    for i in range(kh):
        for j in range(kw):
            r = rows0 + i * dh
            cc = cols0 + j * dw
            r_ok = (r >= 0) & (r < h)
            c_ok = (cc >= 0) & (cc < w)
            val = x[:, :, np.clip(r, 0, h - 1)][:, :, :, np.clip(cc, 0, w - 1)]
            inside = r_ok[:, None] & c_ok[None, :]
            val = np.where(inside, val, -np.inf)          # padding acts as -inf
            take = (val > best) | np.isnan(val)
            best = np.where(take, val, best)
            best_idx = np.where(take, (r[:, None] * w + cc[None, :]), best_idx)
    best_idx = best_idx.astype(np.int64)
    if unbatched:
        return best[0], best_idx[0]
    return best, best_idx


@np.errstate(invalid="ignore", over="ignore")
def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """PyTorch CPU: window [start, start+k) clipped to [-pad, size+pad) gives pool_size,
    then clipped to the input for the sum and for count_include_pad=False. A window with
    no input element gives 0."""
    x = np.asarray(x, dtype=np.float64)
    unbatched = x.ndim == 3
    if unbatched:
        x = x[None]
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), _ = _pool_window(kernel_size, stride, padding, 1)
    oh = pool_out_size(h, kh, sh, ph, 1, ceil_mode)
    ow = pool_out_size(w, kw, sw, pw, 1, ceil_mode)
    out = np.zeros((n, c, oh, ow))
    for a in range(oh):
        h0 = a * sh - ph
        h1 = min(h0 + kh, h + ph)
        for b in range(ow):
            w0 = b * sw - pw
            w1 = min(w0 + kw, w + pw)
            pool_size = (h1 - h0) * (w1 - w0)
            y0, y1, x0, x1 = max(h0, 0), min(h1, h), max(w0, 0), min(w1, w)
            if y0 >= y1 or x0 >= x1:
                continue
            if divisor_override is not None:
                divisor = divisor_override
            elif count_include_pad:
                divisor = pool_size
            else:
                divisor = (y1 - y0) * (x1 - x0)
            out[:, :, a, b] = x[:, :, y0:y1, x0:x1].sum(axis=(2, 3)) / divisor
    return out[0] if unbatched else out


# ------------------------------------------------------------------- comparison
# Tolerances live in one table, engine.registry.TOLERANCE (average pooling: "pool").


def max_rel_error(out, ref):
    """max|out - ref| / max(1, max|ref|) over the finite reference entries."""
    out = np.asarray(out, dtype=np.float64)
    fin = np.isfinite(ref)
    if not fin.any():
        return 0.0
    err = np.max(np.abs(out[fin] - ref[fin]))
    return err / max(1.0, float(np.max(np.abs(ref[fin]))))


def assert_close(out, ref, tol, what=""):
    """Same shape; NaN exactly where the reference has NaN, the same infinities; and
    max|out - ref| <= tol * max(1, max|ref|) elsewhere."""
    out = np.asarray(out)
    assert out.shape == ref.shape, f"{what}: shape {out.shape} != reference {ref.shape}"
    nan_ref = np.isnan(ref)
    nan_out = np.isnan(out)
    assert np.array_equal(nan_out, nan_ref), (
        f"{what}: NaN at {np.argwhere(nan_out != nan_ref)[:5].tolist()} differs from the reference")
    inf_ref = np.isinf(ref)
    assert np.array_equal(np.isinf(out), inf_ref) and np.array_equal(out[inf_ref], ref[inf_ref]), (
        f"{what}: infinities differ from the reference")
    err = max_rel_error(out, ref)
    assert err <= tol, f"{what}: relative error {err:.3g} > tolerance {tol:.3g}"
