"""Float tolerances derived from float32 arithmetic, for tests that compare against numbers.

Two float32 programs of the same algorithm (the official torch code that wrote the
fixtures, and keras_dino on any backend, CPU, BLAS/oneDNN kernel, thread count or XLA
fusion) add the same terms in different orders, so they differ by rounding. A test's bound
is a formula of the computation's size, not the last digits one machine produced:

* `UNIT_ROUNDOFF` u = 2**-24 is float32's unit roundoff: one correctly rounded operation
  (+, -, *, /, sqrt) is off by at most u relative, and identical sequences of such
  operations give identical bits on every IEEE machine. Only the order of reductions,
  fused multiply-adds and the library's transcendental functions (exp, erf, tanh, rsqrt:
  a few ulps, not correctly rounded) make two programs differ.
* A sum of n terms evaluated in any order is off by at most lambda * sqrt(n) * u *
  sum|terms| with probability 1 - 2 exp(-lambda^2 / 2) (Higham and Mary's probabilistic
  bound, 2019); `LAMBDA` = 6 makes that 1 - 3e-8 (`sum_tolerance`).
* Two float32 programs differ by at most twice one program's error (`programs=2`);
  against an exact or float64 reference only one program's error counts (`programs=1`).
* A deep network chains reductions; their independent rounding errors add in quadrature
  relative to the output's scale when each layer is normalised (LayerNorm, softmax,
  BatchNorm) so that it neither grows nor shrinks errors relative to its values:
  lambda * u * sqrt(sum of the reduction lengths) * scale (`network_tolerance`). A library
  function accurate to k ulps counts as a reduction of length k**2.

A wrong rule (an epsilon, a GELU approximation, a missing scale, a transposed weight)
moves outputs by far more than these bounds: docs/tolerances.md lists the measured
spread of every bound over backends, kernels and thread counts.
"""

import json
import math
import os

import numpy as np

UNIT_ROUNDOFF = 2.0**-24
LAMBDA = 6.0
# float32 exp, erf, tanh and rsqrt of the backends' math libraries: within 4 ulps, so the
# error of one call is that of a sum of 4**2 terms.
LIBRARY_FUNCTION = 16


def sum_tolerance(n, abs_sum=1.0, programs=2, lam=LAMBDA):
    """Bound on the difference of a length-`n` float32 sum computed by `programs` programs.

    `lam * sqrt(n) * u * abs_sum` per program, `abs_sum` being `sum|terms|` (a scalar or an
    array, e.g. `|a| @ |b|`).
    """
    return programs * lam * math.sqrt(n) * UNIT_ROUNDOFF * np.asarray(abs_sum, np.float64)


def matmul_tolerance(a, b, programs=2, lam=LAMBDA):
    """Elementwise bound on `a @ b` computed by `programs` float32 programs.

    `programs * lam * sqrt(k) * u * (|a| @ |b|)`, k the inner size.
    """
    a = np.abs(np.asarray(a, np.float64))
    b = np.abs(np.asarray(b, np.float64))
    return sum_tolerance(a.shape[-1], a @ b, programs=programs, lam=lam)


def network_tolerance(reductions, scale=1.0, programs=2, lam=LAMBDA):
    """Bound on an output of a chain of normalised layers, relative to its `scale`.

    `reductions` lists the lengths of the reductions (and `LIBRARY_FUNCTION` per library
    function) one output element depends on in sequence; their errors add in quadrature:
    `programs * lam * u * sqrt(sum(reductions)) * scale`. `[widest] * depth` bounds a
    network of `depth` reductions none longer than `widest`. `scale` may be an array (a
    bound relative to each value).
    """
    total = float(sum(reductions))
    relative = programs * lam * UNIT_ROUNDOFF * math.sqrt(total)
    return relative * np.asarray(scale, np.float64) if np.ndim(scale) else relative * float(scale)


def vit_reductions(depth, embed_dim, num_tokens, patch_size, num_heads, mlp_ratio=4.0,
                   in_chans=3, final_norm=True, patch_embed=True):
    """The reductions an output of a ViT's `depth` blocks depends on, in order.

    Patch embedding (`in_chans * p * p`); per block: LayerNorm (mean and variance over E,
    an rsqrt), qkv (E), attention logits (E / heads), softmax (exp, sum over the N tokens),
    attention times values (N), projection (E), LayerNorm, fc1 (E), GELU (erf), fc2
    (mlp_ratio * E); the final LayerNorm.
    """
    e, n = int(embed_dim), int(num_tokens)
    norm = [e, e, LIBRARY_FUNCTION]
    out = [in_chans * patch_size * patch_size] if patch_embed else []
    block = norm + [e, e // num_heads, LIBRARY_FUNCTION, n, n, e] + norm + [
        e, LIBRARY_FUNCTION, int(mlp_ratio * e)]
    out += block * int(depth)
    if final_norm:
        out += norm
    return out


def head_reductions(in_dim, hidden_dim, bottleneck_dim, nlayers=3):
    """The reductions of a `DINOHead` output: `nlayers` Linear layers and GELUs, the L2
    normalisation of the bottleneck and the weight-normalised last layer (norm and product
    over `bottleneck_dim`)."""
    dims = [in_dim] + [hidden_dim] * (nlayers - 1)
    out = []
    for d in dims:
        out += [d, LIBRARY_FUNCTION]
    return out + [bottleneck_dim, LIBRARY_FUNCTION, bottleneck_dim, bottleneck_dim]


def resize_tolerance(source_size, taps, slope_sum, weight_sum, coefficient_ops, scale=1.0):
    """Bound on a separable resize computed by two programs, at least one of which rounds
    its coefficients in float32, relative to the input's largest magnitude `scale`.

    The source coordinate `(i + 0.5) / s - 0.5` is rounded 3 times at magnitudes up to
    `source_size` (|dt| <= 3 u source_size), which moves an output by at most
    `slope_sum` = sum|W'| times |dt| times `scale`; each of the `taps` coefficients adds
    `coefficient_ops` roundings; the other axis multiplies by `weight_sum` = sum|W|; 2
    axes. Both programs round the taps**2-term weighted sum (`sum_tolerance`).
    """
    coefficient = slope_sum * 3 * source_size + taps * coefficient_ops
    official = UNIT_ROUNDOFF * 2 * weight_sum * coefficient
    return (official + float(sum_tolerance(taps * taps, weight_sum**2, 2))) * float(scale)


def bicubic_tolerance(source_side, scale=1.0):
    """Bound on a torch bicubic resize of a `source_side` grid against keras_dino's, whose
    coefficients are float64, relative to the grid's largest magnitude `scale`.

    Cubic convolution kernel (a = -0.75): sum|W'| <= 4.2, sum|W| <= 1.25, 4 taps whose
    polynomials take 6 roundings each. Worst case for the coefficients, not probabilistic.
    """
    return resize_tolerance(source_side, 4, 4.2, 1.25, 6, scale)


def bilinear_tolerance(source_size, scale=1.0):
    """As `bicubic_tolerance`, for torch's bilinear resize (2 taps, sum|W'| = 2,
    sum|W| = 1, one rounding per coefficient), `source_size` the longer input side."""
    return resize_tolerance(source_size, 2, 2.0, 1.0, 1, scale)


def max_deviation(actual, expected):
    """`max |actual - expected|`, in float64."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected))) if expected.size else 0.0


def assert_within(actual, expected, bound, what=""):
    """Asserts `|actual - expected| <= bound` elementwise (`bound` a scalar or an array).

    With `KERAS_DINO_TOLERANCE_LOG=<file>` set, appends one JSON line per call (the test,
    `what`, the largest deviation, the bound and their largest ratio): how
    docs/tolerances.md measures the spread of every bound over backends and kernels.
    """
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape} != reference {expected.shape}")
    bound = np.broadcast_to(np.asarray(bound, np.float64), expected.shape)
    error = np.abs(actual - expected)
    ratio = float(np.max(error / np.maximum(bound, 1e-300))) if error.size else 0.0
    log = os.environ.get("KERAS_DINO_TOLERANCE_LOG")
    if log:
        record = {
            "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
            "what": what,
            "deviation": float(error.max()) if error.size else 0.0,
            "bound": float(bound.max()) if bound.size else 0.0,
            "ratio": ratio,
        }
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")
    if not ratio <= 1.0:  # also fails on NaN
        worst = np.unravel_index(int(np.nanargmax(error / np.maximum(bound, 1e-300))),
                                 error.shape) if error.size else ()
        raise AssertionError(
            f"{what}: |ours - reference| = {float(error[worst]):.3e} at {worst} exceeds its "
            f"float32 bound {float(bound[worst]):.3e} ({ratio:.3g}x)")
