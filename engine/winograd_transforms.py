"""Winograd / Cook-Toom transform matrices for F(m, r), derived in exact arithmetic.

The 1-D minimal filtering algorithm F(m, r) computes m outputs of the correlation
``y[i] = sum_k d[i + k] g[k]`` (k < r) from a tile of ``alpha = m + r - 1`` inputs with
alpha multiplications::

    y = A^T [ (G g) * (B^T d) ]          A^T: m x alpha, G: alpha x r, B^T: alpha x alpha

and the 2-D one nests it: ``Y = A^T [ (G g G^T) * (B^T d B) ] A`` on alpha x alpha tiles.

Derivation (Toom-Cook, transposed as in Lavin & Gray 2016). Pick alpha - 1 distinct
finite points p_0..p_{alpha-2} and the point at infinity. The *linear convolution*
c = u * g of a length-m polynomial u and a length-r polynomial g (degree alpha - 1) is
recovered from its values c(p_i) = u(p_i) g(p_i) and its leading coefficient
c_inf = u_{m-1} g_{r-1} by Lagrange interpolation::

    c(x) = sum_i c(p_i) L_i(x) + c_inf M(x),   M(x) = prod_j (x - p_j),
    L_i(x) = prod_{j != i} (x - p_j) / N_i,    N_i = prod_{j != i} (p_i - p_j).

So c = C [(V_m u) * (V_r g)], with V_k the k-column evaluation matrix (row i =
[1, p_i, .., p_i^(k-1)], row inf = [0, .., 0, 1]) and C's column i the coefficients of
L_i (column inf those of M). Correlation is the transpose of u -> c (for fixed g), so

    A^T = V_m^T,   G = V_r,   B^T = C^T.

Scaling. Row i of G may be multiplied by s_i if row i of B^T (or column i of A^T) is
divided by it. We put every non-dyadic factor into G: B^T row i holds the coefficients
of the *monic* polynomial prod_{j != i}(x - p_j) (sign chosen so its constant
coefficient is >= 0, as ncnn/wincnn print it) and G row i = [1, p_i, p_i^2] / N_i. The
weight transform G g G^T is done once per layer in float64 and rounded once, while B^T
and A^T (applied to data on every call, in the working precision) then have only
"nice" entries: for the rational point sets below they are dyadic rationals, exact in
float32. Power-of-two scalings change no rounding at all, so we additionally scale each
column of A^T by a power of two that makes its largest entry lie in [1, 2) (e.g. the
column of p = 1/2 becomes 32, 16, .., 1 for F(6,3), as in ncnn), compensating in G.

Point sets (``POINTS``): F(2,3) {0, 1, -1}; F(4,3) {0, +-sqrt2, +-sqrt2/2} (chosen over
the usual {0, +-1, +-2} by measurement, see ``F4X3_CHOICE``); F(6,3) {0, +-1, +-2, +-1/2}.
For the sqrt2 set B^T and A^T have irrational entries (rounded once to the working
precision); it is still about 5x more accurate in float32 than the rational set.
Irrational points live in ``QSqrt2``, an exact field Q(sqrt 2) of numbers a + b sqrt2.
"""
from fractions import Fraction

import numpy as np

__all__ = ["QSqrt2", "POINTS", "POINTS_SQRT2_F4X3", "POINTS_RATIONAL_F4X3", "F4X3_CHOICE", "ALGORITHMS",
           "transform_matrices", "transform_matrices_exact", "to_float", "tile_size",
           "check_exact"]


class QSqrt2:
    """Exact element a + b*sqrt(2) of the field Q(sqrt 2), a and b Fractions."""

    __slots__ = ("a", "b")

    def __init__(self, a=0, b=0):
        if isinstance(a, QSqrt2):
            a, b = a.a, a.b
        self.a = Fraction(a)
        self.b = Fraction(b)

    @staticmethod
    def _lift(x):
        return x if isinstance(x, QSqrt2) else QSqrt2(x)

    def __add__(self, o):
        o = self._lift(o)
        return QSqrt2(self.a + o.a, self.b + o.b)

    __radd__ = __add__

    def __neg__(self):
        return QSqrt2(-self.a, -self.b)

    def __sub__(self, o):
        return self + (-self._lift(o))

    def __rsub__(self, o):
        return self._lift(o) - self

    def __mul__(self, o):
        o = self._lift(o)
        return QSqrt2(self.a * o.a + 2 * self.b * o.b, self.a * o.b + self.b * o.a)

    __rmul__ = __mul__

    def __truediv__(self, o):
        o = self._lift(o)
        n = o.a * o.a - 2 * o.b * o.b          # norm; nonzero for o != 0 (sqrt2 irrational)
        if n == 0:
            raise ZeroDivisionError("division by zero in Q(sqrt2)")
        return self * QSqrt2(o.a / n, -o.b / n)

    def __rtruediv__(self, o):
        return self._lift(o) / self

    def __eq__(self, o):
        if isinstance(o, (int, Fraction, QSqrt2)):
            o = self._lift(o)
            return self.a == o.a and self.b == o.b
        return NotImplemented

    def __hash__(self):
        return hash((self.a, self.b))

    def __float__(self):
        # a + b*sqrt2 rounded once: evaluate in extended precision via Fractions of sqrt2
        # to 60 digits so the float64 result is correctly rounded for our small entries.
        s = Fraction(14142135623730950488016887242096980785696718753769, 10 ** 49)
        return float(self.a + self.b * s)

    def __abs__(self):
        return self if float(self) >= 0 else -self

    def __repr__(self):
        if self.b == 0:
            return f"{self.a}"
        return f"({self.a} + {self.b}*sqrt2)"


SQRT2 = QSqrt2(0, 1)
INF = None   # the point at infinity is implicit: every set gets it as the last point

POINTS = {
    "f2x3": (Fraction(0), Fraction(1), Fraction(-1)),
    "f4x3": None,           # filled below with the sqrt2 set (see F4X3_CHOICE)
    "f6x3": (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2),
             Fraction(1, 2), Fraction(-1, 2)),
}
POINTS_SQRT2_F4X3 = (QSqrt2(0), SQRT2, -SQRT2, SQRT2 / 2, -SQRT2 / 2)
POINTS_RATIONAL_F4X3 = (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2))

# F(4,3): {0, +-sqrt2, +-sqrt2/2} against the usual {0, +-1, +-2}, measured in a float32
# emulation of the whole pipeline (transforms and GEMM in float32, G g G^T in float64),
# N(0,1) data and weights, 48x48 outputs, max abs error vs float64 direct correlation:
#     C =  64: rational 6.96e-4, sqrt2 1.57e-4 (0.22x)
#     C = 256: rational 3.63e-3, sqrt2 6.52e-4 (0.18x)
#     C = 512: rational 7.54e-3, sqrt2 1.30e-3 (0.17x)
# i.e. 4.5-6x less error (the points are closer to the origin and symmetric under
# x -> 1/x, so B^T and A^T are better conditioned), for the same arithmetic cost. Kept.
F4X3_CHOICE = "sqrt2 {0, +-sqrt2, +-sqrt2/2}"
POINTS["f4x3"] = POINTS_SQRT2_F4X3

ALGORITHMS = {"winograd_f2x3": 2, "winograd_f4x3": 4, "winograd_f6x3": 6}


def tile_size(m, r=3):
    return m + r - 1


def _poly_from_roots(roots):
    """Coefficients (low to high) of the monic polynomial prod (x - root)."""
    c = [QSqrt2(1)]
    for p in roots:
        nxt = [QSqrt2(0)] * (len(c) + 1)
        for k, ck in enumerate(c):
            nxt[k + 1] = nxt[k + 1] + ck
            nxt[k] = nxt[k] - p * ck
        c = nxt
    return c


def _simplify(M):
    """Entries back to Fraction where the sqrt2 part vanished (nicer to read and compare)."""
    return [[(e.a if isinstance(e, QSqrt2) and e.b == 0 else e) for e in row] for row in M]


def _pow2_scale(x):
    """Power of two 2^k with 2^k * |x| in [1, 2) (x != 0), exactly."""
    x = abs(float(x))
    k = 0
    while x * 2.0 ** k >= 2.0:
        k -= 1
    while x * 2.0 ** k < 1.0:
        k += 1
    return Fraction(2) ** k


def transform_matrices_exact(m, r=3, points=None, scale=True):
    """(AT, G, BT) of F(m, r) as nested lists of exact numbers (Fraction or QSqrt2).

    ``points``: the alpha - 1 finite interpolation points (default ``POINTS['f{m}x{r}']``);
    infinity is always added as the last point. ``scale=False`` gives the unscaled
    Toom-Cook form (A^T = Vandermonde^T, G = Vandermonde / N_i, B^T = monic products).
    """
    alpha = m + r - 1
    if points is None:
        points = POINTS[f"f{m}x{r}"]
    pts = [QSqrt2(p) for p in points]
    if len(pts) != alpha - 1:
        raise ValueError(f"F({m},{r}) needs {alpha - 1} finite points, got {len(pts)}")
    AT = [[QSqrt2(0)] * alpha for _ in range(m)]
    G = [[QSqrt2(0)] * r for _ in range(alpha)]
    BT = [[QSqrt2(0)] * alpha for _ in range(alpha)]
    for i, p in enumerate(pts):
        others = [q for j, q in enumerate(pts) if j != i]
        N = QSqrt2(1)
        for q in others:
            N = N * (p - q)
        if N == 0:
            raise ValueError("interpolation points must be distinct")
        coeffs = _poly_from_roots(others)            # length alpha - 1 (degree alpha - 2)
        sign = -1 if float(coeffs[0]) < 0 else 1     # constant term >= 0 (ncnn's form)
        for k, ck in enumerate(coeffs):
            BT[i][k] = ck * sign
        pk = QSqrt2(1)
        for k in range(max(m, r)):
            if k < m:
                AT[k][i] = pk
            if k < r:
                G[i][k] = pk / N * sign
            pk = pk * p
    # the point at infinity: B^T row = coefficients of M(x) = prod (x - p_j); leading
    # coefficient picks u_{m-1} and g_{r-1}
    for k, ck in enumerate(_poly_from_roots(pts)):
        BT[alpha - 1][k] = ck
    AT[m - 1][alpha - 1] = QSqrt2(1)
    G[alpha - 1][r - 1] = QSqrt2(1)
    if scale:
        for i in range(alpha):
            col_max = max((AT[k][i] for k in range(m)), key=lambda e: abs(float(e)))
            s = _pow2_scale(col_max)
            if s != 1:
                for k in range(m):
                    AT[k][i] = AT[k][i] * s
                for k in range(r):
                    G[i][k] = G[i][k] / s
    return _simplify(AT), _simplify(G), _simplify(BT)


def to_float(M):
    return np.array([[float(e) for e in row] for row in M], dtype=np.float64)


def transform_matrices(m, r=3, points=None, scale=True, exact=False):
    """(AT, G, BT) of F(m, r): float64 numpy arrays, or the exact lists with ``exact=True``.

    AT is m x alpha, G is alpha x r, BT is alpha x alpha (alpha = m + r - 1).
    """
    AT, G, BT = transform_matrices_exact(m, r, points, scale)
    if exact:
        return AT, G, BT
    return to_float(AT), to_float(G), to_float(BT)


def check_exact(m, r=3, points=None, scale=True):
    """True when A^T[(G g) * (B^T d)] == correlation(d, g) as a polynomial identity.

    Checked exactly on the coefficient tensor: y_i = sum_{j,k} T[i][j][k] d_j g_k with
    T[i][j][k] = sum_l AT[i][l] G[l][k] BT[l][j]; correlation needs T = [j == i + k].
    """
    AT, G, BT = transform_matrices_exact(m, r, points, scale)
    alpha = m + r - 1
    for i in range(m):
        for j in range(alpha):
            for k in range(r):
                t = QSqrt2(0)
                for l in range(alpha):
                    t = t + QSqrt2(AT[i][l]) * G[l][k] * BT[l][j]
                if not t == (1 if j == i + k else 0):
                    return False
    return True


C_HEADER = "engine/kernels/ukernels/winograd_matrices.h"


def c_header():
    """The text of ``C_HEADER``: B^T and A^T of F(2,3), F(4,3), F(6,3) as C constants.

    The tile kernels need the matrices as compile-time constants, so that their
    transforms unroll into straight-line FMAs with zero entries dropped. This function
    is the one source of those constants: the header is generated from it (python -c
    "from engine import winograd_transforms as w; open(w.C_HEADER, 'w').write(w.c_header())")
    and a test checks the committed file equals it; values are exact float64 (repr)."""
    lines = ["/* Generated by engine.winograd_transforms.c_header(): do not edit. B^T (alpha x alpha)",
             " * and A^T (m x alpha) of F(m x m, 3 x 3), row-major float64, for m = 2, 4, 6. */",
             "#ifndef CONVTUNE_WINOGRAD_MATRICES_H", "#define CONVTUNE_WINOGRAD_MATRICES_H"]
    for m in (2, 4, 6):
        AT, _, BT = transform_matrices(m)
        for name, M in (("BT", BT), ("AT", AT)):
            values = ", ".join(repr(float(v)) for v in M.ravel())
            lines.append(f"static const double WG_{name}{m}[{M.size}] = {{{values}}};")
    lines.append("#endif")
    return "\n".join(lines) + "\n"
