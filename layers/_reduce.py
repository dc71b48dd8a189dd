"""Row reductions shared by the batch-norm and GFGP statistics kernels: float64 sums with four
independent partial sums (so the loop pipelines without fastmath)."""
from minignn._numba import njit


@njit(inline="always")
def sum_row(a, n, c, length):
    """sum_i a[n, c, i] in float64."""
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    i = 0
    while i + 4 <= length:
        s0 += a[n, c, i]
        s1 += a[n, c, i + 1]
        s2 += a[n, c, i + 2]
        s3 += a[n, c, i + 3]
        i += 4
    while i < length:
        s0 += a[n, c, i]
        i += 1
    return (s0 + s1) + (s2 + s3)


@njit(inline="always")
def sqdev_row(a, n, c, length, m):
    """sum_i (a[n, c, i] - m)**2 in float64."""
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    i = 0
    while i + 4 <= length:
        d0 = a[n, c, i] - m
        d1 = a[n, c, i + 1] - m
        d2 = a[n, c, i + 2] - m
        d3 = a[n, c, i + 3] - m
        s0 += d0 * d0
        s1 += d1 * d1
        s2 += d2 * d2
        s3 += d3 * d3
        i += 4
    while i < length:
        d0 = a[n, c, i] - m
        s0 += d0 * d0
        i += 1
    return (s0 + s1) + (s2 + s3)
