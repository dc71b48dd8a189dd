// Window geometry for the CUDA kernels: the mirror of layers/_window.py's kernel-side helpers
// (real_offsets, valid_range), so that the CPU and GPU kernels agree on which cells a window
// holds. A window of output (oh, ow) starts at row oh*sh - ph and column ow*sw - pw; cells in the
// padding are never part of it (padding < kernel, so every window holds a real cell).
#pragma once

// The offsets [*d0, *d1) of a window starting at `start` whose cells start + d lie in [0, size).
__device__ __forceinline__ void minignn_real_offsets(int start, int k, int size, int* d0, int* d1) {
    *d0 = start < 0 ? -start : 0;
    *d1 = start + k > size ? size - start : k;
}

// The output indices [*lo, *hi) of the windows that hold input index `i` (0 <= i < size) at some
// offset: o*s - p <= i <= o*s - p + k - 1, and 0 <= o < n_out.
__device__ __forceinline__ void minignn_windows_of(int i, int k, int s, int p, int n_out, int* lo, int* hi) {
    const int a = i + p - k + 1;                      // o*s >= a
    int l = a > 0 ? (a + s - 1) / s : 0;
    int h = (i + p) / s + 1;                          // o*s <= i + p
    if (h > n_out) h = n_out;
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

// The first NaN wins a running max and then stays; otherwise a strictly larger value does (the
// first maximum stays): the rule of every max-like kernel of minignn.
template <class T> __device__ __forceinline__ bool minignn_takes_over(T v, T best) {
    return v > best || (v != v && best == best);
}
