// Stochastic pooling on the GPU (NCHW): the CUDA mirror of layers/stochastic/cpu.py, for any window
// geometry. The training backward is max pooling's (the drawn offsets are stored in its argmax
// format), so only three kernels are here:
//
//   train forward  stochpool2d_train_fwd_gpu_*  one thread per output window: the drawn cell, y, arg
//   eval forward   stochpool2d_eval_fwd_gpu_*   one thread per output window: y = sum a^2 / sum a
//   eval backward  stochpool2d_eval_win_gpu_*   one thread per output window: its max m and the two
//                                               coefficients of gy dy/dx_q = ca u_q + cb (u_q = x_q/m)
//                  stochpool2d_eval_gx_gpu_*    one thread per input cell: the sum over the windows
//                                               that hold it (minignn_windows_of)
//
// Every thread writes only its own outputs (no atomics): results are deterministic.
//
// The window arithmetic, all in double whatever T: m = the first maximum of the real cells (the
// first NaN wins); when 0 < m < inf, u_q = x_q / m, S = sum u_q, Q = sum u_q^2.
//   train: t = u S; the first cell (row-major) with u_q > 0 whose running sum of u exceeds t, else
//          the last cell with u_q > 0; m = 0: the floor(u |R|)-th real cell; m = inf or NaN: the
//          first maximum.
//   eval:  y = m Q / S, dy/dx_q = (2 u_q - Q/S) / S; m = 0: y = 0, dy/dx_q = 1/|R|; otherwise y = m
//          and NaN gradients.
#include "common.cuh"
#include "_window.cuh"

struct StochWin {
    long long plane;
    int top, left, r0, r1, c0, c1;
};

__device__ __forceinline__ StochWin stoch_window(long long o, int H, int W, int Ho, int Wo, int kh, int kw, int sh,
                                                 int sw, int ph, int pw) {
    StochWin w;
    const int ow = (int)(o % Wo), oh = (int)((o / Wo) % Ho);
    w.plane = o / ((long long)Ho * Wo);
    w.top = oh * sh - ph;
    w.left = ow * sw - pw;
    minignn_real_offsets(w.top, kh, H, &w.r0, &w.r1);
    minignn_real_offsets(w.left, kw, W, &w.c0, &w.c1);
    return w;
}

// The window's max m (the first NaN wins) and the offset di*kw + dj of that first maximum.
template <class T>
__device__ __forceinline__ double stoch_max(const T* xp, int W, int kw, const StochWin& w, int* k) {
    double m = (double)xp[(w.top + w.r0) * W + w.left + w.c0];
    *k = w.r0 * kw + w.c0;
    for (int di = w.r0; di < w.r1; ++di)
        for (int dj = w.c0; dj < w.c1; ++dj) {
            const double v = (double)xp[(w.top + di) * W + w.left + dj];
            if (minignn_takes_over(v, m)) {
                m = v;
                *k = di * kw + dj;
            }
        }
    return m;
}

__device__ __forceinline__ bool stoch_ordinary(double m) { return m > 0.0 && m < minignn_inf<double>(); }

template <class T, class A>
__device__ void stochpool2d_train_fwd(const T* __restrict__ x, const double* __restrict__ u, int NC, int H, int W,
                                      int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                      T* __restrict__ y, A* __restrict__ arg) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * Ho * Wo) {
        const StochWin w = stoch_window(i, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw);
        const T* xp = x + w.plane * H * W;
        int k;
        const double m = stoch_max(xp, W, kw, w, &k);
        if (m == 0.0) {
            const int cols = w.c1 - w.c0, cnt = (w.r1 - w.r0) * cols;
            int r = (int)floor(u[i] * cnt);
            if (r > cnt - 1) r = cnt - 1;
            k = (w.r0 + r / cols) * kw + w.c0 + r % cols;
        } else if (stoch_ordinary(m)) {
            double s = 0.0;
            for (int di = w.r0; di < w.r1; ++di)
                for (int dj = w.c0; dj < w.c1; ++dj) s += (double)xp[(w.top + di) * W + w.left + dj] / m;
            const double t = u[i] * s;
            double cum = 0.0;
            bool found = false;
            for (int di = w.r0; di < w.r1 && !found; ++di)
                for (int dj = w.c0; dj < w.c1; ++dj) {
                    const double v = (double)xp[(w.top + di) * W + w.left + dj] / m;
                    if (v > 0.0) {
                        cum += v;
                        k = di * kw + dj;
                        if (cum > t) {
                            found = true;
                            break;
                        }
                    }
                }
        }
        const int di = k / kw;
        y[i] = xp[(w.top + di) * W + w.left + k - di * kw];
        arg[i] = (A)k;
    }
}

template <class T>
__device__ void stochpool2d_eval_fwd(const T* __restrict__ x, int NC, int H, int W, int Ho, int Wo, int kh, int kw,
                                     int sh, int sw, int ph, int pw, T* __restrict__ y) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * Ho * Wo) {
        const StochWin w = stoch_window(i, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw);
        const T* xp = x + w.plane * H * W;
        int k;
        const double m = stoch_max(xp, W, kw, w, &k);
        double v = m;
        if (stoch_ordinary(m)) {
            double s = 0.0, q = 0.0;
            for (int di = w.r0; di < w.r1; ++di)
                for (int dj = w.c0; dj < w.c1; ++dj) {
                    const double a = (double)xp[(w.top + di) * W + w.left + dj] / m;
                    s += a;
                    q += a * a;
                }
            v = m * (q / s);
        }
        y[i] = (T)v;
    }
}

// Per window: stats[3 o] = m, stats[3 o + 1] = ca, stats[3 o + 2] = cb.
template <class T>
__device__ void stochpool2d_eval_win(const T* __restrict__ x, const T* __restrict__ gy, int NC, int H, int W, int Ho,
                                     int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                     double* __restrict__ stats) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * Ho * Wo) {
        const StochWin w = stoch_window(i, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw);
        const T* xp = x + w.plane * H * W;
        const double g = (double)gy[i];
        int k;
        const double m = stoch_max(xp, W, kw, w, &k);
        double ca = minignn_nan<double>(), cb = minignn_nan<double>();
        if (stoch_ordinary(m)) {
            double s = 0.0, q = 0.0;
            for (int di = w.r0; di < w.r1; ++di)
                for (int dj = w.c0; dj < w.c1; ++dj) {
                    const double a = (double)xp[(w.top + di) * W + w.left + dj] / m;
                    s += a;
                    q += a * a;
                }
            ca = 2.0 * g / s;
            cb = -g * (q / s) / s;
        } else if (m == 0.0) {
            ca = 0.0;
            cb = g / ((w.r1 - w.r0) * (w.c1 - w.c0));
        }
        stats[3 * i] = m;
        stats[3 * i + 1] = ca;
        stats[3 * i + 2] = cb;
    }
}

template <class T>
__device__ void stochpool2d_eval_gx(const T* __restrict__ x, const double* __restrict__ stats, int NC, int H, int W,
                                    int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                    T* __restrict__ gx) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * H * W) {
        const int w = (int)(i % W), h = (int)((i / W) % H);
        const long long plane = i / ((long long)H * W);
        const double v = (double)x[i];
        int oh0, oh1, ow0, ow1;
        minignn_windows_of(h, kh, sh, ph, Ho, &oh0, &oh1);
        minignn_windows_of(w, kw, sw, pw, Wo, &ow0, &ow1);
        double s = 0.0;
        for (int oh = oh0; oh < oh1; ++oh)
            for (int ow = ow0; ow < ow1; ++ow) {
                const long long o = (plane * Ho + oh) * Wo + ow;
                const double ca = stats[3 * o + 1], cb = stats[3 * o + 2];
                s += (ca != 0.0 ? ca * (v / stats[3 * o]) : 0.0) + cb;
            }
        gx[i] = (T)s;
    }
}

// The entry points. Arguments: the arrays, then (N*C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw) as int32,
// then the outputs. The draws u are double for both dtypes; arg is int8 (_i32: int32 for windows of
// more than 127 cells), as max pooling's.
extern "C" __global__ void stochpool2d_train_fwd_gpu_f32(const float* __restrict__ x, const double* __restrict__ u,
                                                      int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh,
                                                      int sw, int ph, int pw, float* __restrict__ y,
                                                      signed char* __restrict__ arg) {
    stochpool2d_train_fwd(x, u, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y, arg);
}
extern "C" __global__ void stochpool2d_train_fwd_gpu_f64(const double* __restrict__ x, const double* __restrict__ u,
                                                      int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh,
                                                      int sw, int ph, int pw, double* __restrict__ y,
                                                      signed char* __restrict__ arg) {
    stochpool2d_train_fwd(x, u, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y, arg);
}
extern "C" __global__ void stochpool2d_train_fwd_gpu_f32_i32(const float* __restrict__ x, const double* __restrict__ u,
                                                      int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh,
                                                      int sw, int ph, int pw, float* __restrict__ y,
                                                      int* __restrict__ arg) {
    stochpool2d_train_fwd(x, u, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y, arg);
}
extern "C" __global__ void stochpool2d_train_fwd_gpu_f64_i32(const double* __restrict__ x, const double* __restrict__ u,
                                                      int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh,
                                                      int sw, int ph, int pw, double* __restrict__ y,
                                                      int* __restrict__ arg) {
    stochpool2d_train_fwd(x, u, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y, arg);
}
extern "C" __global__ void stochpool2d_eval_fwd_gpu_f32(const float* __restrict__ x, int NC, int H, int W, int Ho,
                                                     int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                     float* __restrict__ y) {
    stochpool2d_eval_fwd(x, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y);
}
extern "C" __global__ void stochpool2d_eval_win_gpu_f32(const float* __restrict__ x, const float* __restrict__ gy, int NC,
                                                     int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw,
                                                     int ph, int pw, double* __restrict__ stats) {
    stochpool2d_eval_win(x, gy, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, stats);
}
extern "C" __global__ void stochpool2d_eval_gx_gpu_f32(const float* __restrict__ x, const double* __restrict__ stats,
                                                    int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh,
                                                    int sw, int ph, int pw, float* __restrict__ gx) {
    stochpool2d_eval_gx(x, stats, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, gx);
}
extern "C" __global__ void stochpool2d_eval_fwd_gpu_f64(const double* __restrict__ x, int NC, int H, int W, int Ho,
                                                     int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                     double* __restrict__ y) {
    stochpool2d_eval_fwd(x, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y);
}
extern "C" __global__ void stochpool2d_eval_win_gpu_f64(const double* __restrict__ x, const double* __restrict__ gy, int NC,
                                                     int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw,
                                                     int ph, int pw, double* __restrict__ stats) {
    stochpool2d_eval_win(x, gy, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, stats);
}
extern "C" __global__ void stochpool2d_eval_gx_gpu_f64(const double* __restrict__ x, const double* __restrict__ stats,
                                                    int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh,
                                                    int sw, int ph, int pw, double* __restrict__ gx) {
    stochpool2d_eval_gx(x, stats, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, gx);
}
