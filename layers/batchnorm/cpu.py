"""Numba kernels of 2-D batch normalisation, fused per channel.

Arrays come in as ``(N, C, L)`` views of C-contiguous ``(N, C, H, W)`` arrays (``L = H*W``).
Both kernels run in parallel over channels (``prange(C)``): a channel's statistics, its
normalised output and its gradient touch only that channel's cells and per-channel slots, so
there is no race. Per-channel statistics are float64 arrays; every reduction accumulates in
float64 over four independent partial sums (the order of float additions is fixed, so the
compiler may not reassociate a single sum; four chains keep the adder busy), and the mean and
variance take two passes (mean, then squared deviations from it), which stays accurate when
``|mean| >> std``. A channel's slice (``N*L`` values) is read two or three times in a row, so
the later passes mostly hit cache.
"""
from __future__ import annotations

import math

from minignn._numba import njit, pjit, prange
from minignn.layers._reduce import sqdev_row, sum_row


@njit(inline="always")
def _grad_sums_row(gy, x, n, c, length, m):
    """(sum_i gy[n, c, i], sum_i gy[n, c, i] * (x[n, c, i] - m)) in float64."""
    g0 = 0.0
    g1 = 0.0
    q0 = 0.0
    q1 = 0.0
    i = 0
    while i + 2 <= length:
        a0 = gy[n, c, i]
        a1 = gy[n, c, i + 1]
        g0 += a0
        g1 += a1
        q0 += a0 * (x[n, c, i] - m)
        q1 += a1 * (x[n, c, i + 1] - m)
        i += 2
    while i < length:
        a0 = gy[n, c, i]
        g0 += a0
        q0 += a0 * (x[n, c, i] - m)
        i += 1
    return g0 + g1, q0 + q1


@pjit
def batchnorm2d_fwd_cpu(x, gamma, beta, eps, train, mean, var, invstd, y):
    """Normalise ``x`` (N, C, L) per channel into ``y``.

    train=True: first compute the batch ``mean`` and biased ``var`` of each channel (outputs);
    train=False: use the given ``mean`` and ``var`` (the running statistics).
    Then ``invstd = 1/sqrt(var + eps)`` and ``y = (x - mean) * invstd * gamma + beta``.
    """
    n_img, n_ch, length = x.shape
    count = n_img * length
    for c in prange(n_ch):
        if train:
            s = 0.0
            for n in range(n_img):
                s += sum_row(x, n, c, length)
            m = s / count
            q = 0.0
            for n in range(n_img):
                q += sqdev_row(x, n, c, length, m)
            mean[c] = m
            var[c] = q / count
        m = mean[c]
        r = 1.0 / math.sqrt(var[c] + eps)
        invstd[c] = r
        scale = r * gamma[c]
        shift = 1.0 * beta[c]
        for n in range(n_img):
            for i in range(length):
                y[n, c, i] = (x[n, c, i] - m) * scale + shift


@pjit
def batchnorm2d_bwd_cpu(x, gy, gamma, mean, invstd, train, gx, ggamma, gbeta):
    """Gradients of batch norm for ``x``, ``gy`` (N, C, L); per-channel sums go to ``ggamma``
    and ``gbeta`` (float64), the input gradient to ``gx``.

    With ``M = N*L``, ``S_g = sum gy``, ``S_gx = sum gy*(x - mean)`` per channel:
    ``gbeta = S_g``, ``ggamma = S_gx * invstd``, and
    train: ``gx = gamma*invstd * (gy - S_g/M - (x - mean) * invstd**2 * S_gx/M)``;
    eval:  ``gx = gamma*invstd * gy`` (the statistics are constants).
    """
    n_img, n_ch, length = x.shape
    count = n_img * length
    for c in prange(n_ch):
        m = mean[c]
        r = invstd[c]
        sg = 0.0
        sgx = 0.0
        for n in range(n_img):
            a, b = _grad_sums_row(gy, x, n, c, length, m)
            sg += a
            sgx += b
        gbeta[c] = sg
        ggamma[c] = sgx * r
        a = gamma[c] * r
        if train:
            b = -a * r * r * sgx / count
            k = -a * sg / count
            for n in range(n_img):
                for i in range(length):
                    gx[n, c, i] = a * gy[n, c, i] + b * (x[n, c, i] - m) + k
        else:
            for n in range(n_img):
                for i in range(length):
                    gx[n, c, i] = a * gy[n, c, i]
