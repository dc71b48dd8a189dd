// Power-average (Lp) pooling on the GPU (NCHW): the CUDA mirror of layers/lppool/cpu.py, for any
// window geometry and one p per channel (p is a (C,) array; a scalar p is broadcast by the glue).
//
//   forward   lppool2d_fwd_gpu_*      one thread per output window: y
//   backward  lppool2d_bwd_win_gpu_*  one thread per output window: the window's max m and its
//                                     gradient coefficient gy A^(1/p - 1) / |R| (gy / |R| for an
//                                     all-zero window), and its term gy dy/dp, which the glue
//                                     sums over N, Ho, Wo with an xp reduction
//             lppool2d_bwd_gx_gpu_*   one thread per input cell: sum over the windows that hold
//                                     it (minignn_windows_of) of coef (x / m)^(p - 1)
//
// Every thread writes only its own outputs (no atomics): results are deterministic.
//
// The window arithmetic, all in double whatever T (see cpu.py's docstring): m = max over the real
// cells (the first NaN wins); for 0 < m < inf, u_q = x_q / m, A = 1/|R| sum u_q^p,
// B = 1/|R| sum u_q^p log u_q (0 log 0 = 0), y = m A^(1/p), dy/dx_q = 1/|R| u_q^(p-1) A^(1/p-1),
// dy/dp = y/p (B/A - log(A)/p); otherwise y = m (0 for an all-zero window: dy/dx_q = 1/|R| and
// dy/dp = 0; inf or NaN: NaN gradients). The per-window statistics are stored in double.
#include "common.cuh"
#include "_window.cuh"

// The window of output o: its plane, first row and column (may be in the padding), real offsets.
struct LpWin {
    long long plane;
    int c, top, left, r0, r1, c0, c1;
};

__device__ __forceinline__ LpWin lppool_window(long long o, int C, int H, int W, int Ho, int Wo, int kh, int kw,
                                               int sh, int sw, int ph, int pw) {
    LpWin w;
    const int ow = (int)(o % Wo), oh = (int)((o / Wo) % Ho);
    w.plane = o / ((long long)Ho * Wo);
    w.c = (int)(w.plane % C);
    w.top = oh * sh - ph;
    w.left = ow * sw - pw;
    minignn_real_offsets(w.top, kh, H, &w.r0, &w.r1);
    minignn_real_offsets(w.left, kw, W, &w.c0, &w.c1);
    return w;
}

template <class T> __device__ __forceinline__ double lppool_max(const T* xp, int W, const LpWin& w) {
    double m = (double)xp[(w.top + w.r0) * W + w.left + w.c0];
    for (int di = w.r0; di < w.r1; ++di)
        for (int dj = w.c0; dj < w.c1; ++dj) {
            const double v = (double)xp[(w.top + di) * W + w.left + dj];
            if (minignn_takes_over(v, m)) m = v;
        }
    return m;
}

__device__ __forceinline__ bool lppool_ordinary(double m) { return m > 0.0 && m < minignn_inf<double>(); }

// u^e for u >= 0 and e >= 0, as exp(e log u): 0^0 = 1, 0^e = 0 for e > 0, NaN stays NaN. (The math
// library's double pow is a called function, not inlined, which the compile tier reports as a
// kernel without registers; the arguments here are bounded, u in [0, 1] and A in [1/|R|, 1], so
// exp(e log u) loses only |e log u| ulps.)
__device__ __forceinline__ double lppool_pow(double u, double e) {
    if (u > 0.0) return exp(e * log(u));
    if (u == 0.0) return e == 0.0 ? 1.0 : 0.0;
    return minignn_nan<double>();
}

// y = m (1/|R| sum (x/m)^p)^(1/p) over the window's real cells; y = m unless 0 < m < inf.
template <class T>
__device__ void lppool2d_fwd(const T* __restrict__ x, const T* __restrict__ p, int NC, int C, int H, int W, int Ho,
                             int Wo, int kh, int kw, int sh, int sw, int ph, int pw, T* __restrict__ y) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * Ho * Wo) {
        const LpWin w = lppool_window(i, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw);
        const T* xp = x + w.plane * H * W;
        const double pc = (double)p[w.c];
        const double m = lppool_max(xp, W, w);
        double v = m;
        if (lppool_ordinary(m)) {
            double s = 0.0;
            for (int di = w.r0; di < w.r1; ++di)
                for (int dj = w.c0; dj < w.c1; ++dj) s += lppool_pow((double)xp[(w.top + di) * W + w.left + dj] / m, pc);
            v = m * lppool_pow(s / ((w.r1 - w.r0) * (w.c1 - w.c0)), 1.0 / pc);
        }
        y[i] = (T)v;
    }
}

// Per window: stats[2 o] = m, stats[2 o + 1] = the gradient coefficient, dpw[o] = gy dy/dp.
template <class T>
__device__ void lppool2d_bwd_win(const T* __restrict__ x, const T* __restrict__ p, const T* __restrict__ gy, int NC,
                                 int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                 double* __restrict__ stats, double* __restrict__ dpw) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * Ho * Wo) {
        const LpWin w = lppool_window(i, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw);
        const T* xp = x + w.plane * H * W;
        const double pc = (double)p[w.c], inv_p = 1.0 / pc;
        const int cnt = (w.r1 - w.r0) * (w.c1 - w.c0);
        const double g = (double)gy[i];
        const double m = lppool_max(xp, W, w);
        double coef, dp;
        if (lppool_ordinary(m)) {
            double sa = 0.0, sb = 0.0;
            for (int di = w.r0; di < w.r1; ++di)
                for (int dj = w.c0; dj < w.c1; ++dj) {
                    const double u = (double)xp[(w.top + di) * W + w.left + dj] / m;
                    const double up = lppool_pow(u, pc);
                    sa += up;
                    sb += u > 0.0 ? up * log(u) : 0.0;
                }
            const double a = sa / cnt;
            coef = g * lppool_pow(a, inv_p - 1.0) / cnt;
            dp = g * (m * lppool_pow(a, inv_p) * inv_p) * ((sb / cnt) / a - log(a) * inv_p);
        } else if (m == 0.0) {          // all zeros: the average's gradient, dy/dp = 0
            coef = g / cnt;
            dp = 0.0;
        } else {                        // inf or NaN: not differentiable
            coef = minignn_nan<double>();
            dp = minignn_nan<double>();
        }
        stats[2 * i] = m;
        stats[2 * i + 1] = coef;
        dpw[i] = dp;
    }
}

// gx[n, c, h, w] = sum over the windows holding the cell of coef (x / m)^(p - 1) (coef alone for an
// all-zero window, whose m is 0; a NaN coef stays NaN).
template <class T>
__device__ void lppool2d_bwd_gx(const T* __restrict__ x, const T* __restrict__ p, const double* __restrict__ stats,
                                int NC, int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph,
                                int pw, T* __restrict__ gx) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * H * W) {
        const int w = (int)(i % W), h = (int)((i / W) % H);
        const long long plane = i / ((long long)H * W);
        const double pm1 = (double)p[(int)(plane % C)] - 1.0;
        const double v = (double)x[i];
        int oh0, oh1, ow0, ow1;
        minignn_windows_of(h, kh, sh, ph, Ho, &oh0, &oh1);
        minignn_windows_of(w, kw, sw, pw, Wo, &ow0, &ow1);
        double s = 0.0;
        for (int oh = oh0; oh < oh1; ++oh)
            for (int ow = ow0; ow < ow1; ++ow) {
                const long long o = (plane * Ho + oh) * Wo + ow;
                const double m = stats[2 * o], coef = stats[2 * o + 1];
                s += lppool_ordinary(m) ? coef * lppool_pow(v / m, pm1) : coef;
            }
        gx[i] = (T)s;
    }
}

// The entry points: one per dtype. Arguments: the arrays, then (N*C, C, H, W, Ho, Wo, kh, kw, sh, sw,
// ph, pw) as int32, then the outputs; the backward's per-window statistics are double for both.
extern "C" __global__ void lppool2d_fwd_gpu_f32(const float* __restrict__ x, const float* __restrict__ p, int NC, int C,
                                             int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph,
                                             int pw, float* __restrict__ y) {
    lppool2d_fwd(x, p, NC, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y);
}
extern "C" __global__ void lppool2d_fwd_gpu_f64(const double* __restrict__ x, const double* __restrict__ p, int NC,
                                             int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw,
                                             int ph, int pw, double* __restrict__ y) {
    lppool2d_fwd(x, p, NC, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y);
}
extern "C" __global__ void lppool2d_bwd_win_gpu_f32(const float* __restrict__ x, const float* __restrict__ p,
                                                 const float* __restrict__ gy, int NC, int C, int H, int W, int Ho,
                                                 int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                 double* __restrict__ stats, double* __restrict__ dpw) {
    lppool2d_bwd_win(x, p, gy, NC, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, stats, dpw);
}
extern "C" __global__ void lppool2d_bwd_win_gpu_f64(const double* __restrict__ x, const double* __restrict__ p,
                                                 const double* __restrict__ gy, int NC, int C, int H, int W, int Ho,
                                                 int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                 double* __restrict__ stats, double* __restrict__ dpw) {
    lppool2d_bwd_win(x, p, gy, NC, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, stats, dpw);
}
extern "C" __global__ void lppool2d_bwd_gx_gpu_f32(const float* __restrict__ x, const float* __restrict__ p,
                                                const double* __restrict__ stats, int NC, int C, int H, int W, int Ho,
                                                int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                float* __restrict__ gx) {
    lppool2d_bwd_gx(x, p, stats, NC, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, gx);
}
extern "C" __global__ void lppool2d_bwd_gx_gpu_f64(const double* __restrict__ x, const double* __restrict__ p,
                                                const double* __restrict__ stats, int NC, int C, int H, int W, int Ho,
                                                int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                double* __restrict__ gx) {
    lppool2d_bwd_gx(x, p, stats, NC, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, gx);
}
