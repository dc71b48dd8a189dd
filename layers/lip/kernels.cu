// Local importance pooling on the GPU (NCHW): the CUDA mirror of layers/lip/cpu.py, any window
// geometry; x and the logit map L have one shape.
//
//   forward   lippool2d_fwd_gpu_*      one thread per output window: y
//   backward  lippool2d_bwd_win_gpu_*  one thread per output window: its max logit m, its
//                                      coefficient gy / S and its y (double)
//             lippool2d_bwd_gx_gpu_*   one thread per input cell: gathers over the windows that
//                                      hold it (minignn_windows_of) gx = sum gy w_q and
//                                      glogit = sum gy w_q (x_q - y)
//
// Every thread writes only its own outputs (no atomics): results are deterministic.
//
// The window arithmetic, in double whatever T (see cpu.py's docstring): m = max over the real
// cells of L (the first NaN wins); e_q = exp(L_q - m), e_q = 1 where L_q == m (infinite logits
// take their limits); S = sum e_q >= 1; y = sum e_q x_q / S; w_q = e_q / S. A cell of weight 0
// adds nothing (not 0 * x_q).
#include "common.cuh"
#include "_window.cuh"

struct LipWin {
    long long plane;
    int top, left, r0, r1, c0, c1;
};

__device__ __forceinline__ LipWin lip_window(long long o, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw,
                                             int ph, int pw) {
    LipWin w;
    const int ow = (int)(o % Wo), oh = (int)((o / Wo) % Ho);
    w.plane = o / ((long long)Ho * Wo);
    w.top = oh * sh - ph;
    w.left = ow * sw - pw;
    minignn_real_offsets(w.top, kh, H, &w.r0, &w.r1);
    minignn_real_offsets(w.left, kw, W, &w.c0, &w.c1);
    return w;
}

__device__ __forceinline__ double lip_e(double l, double m) { return l == m ? 1.0 : exp(l - m); }

// One window's max logit m, normaliser S and weighted sum T = sum e_q x_q (plane pointers).
template <class T>
__device__ __forceinline__ void lip_softmax(const T* xp, const T* lp, int W, const LipWin& w, double* m, double* s,
                                            double* t) {
    double mx = (double)lp[(w.top + w.r0) * W + w.left + w.c0];
    for (int di = w.r0; di < w.r1; ++di)
        for (int dj = w.c0; dj < w.c1; ++dj) {
            const double v = (double)lp[(w.top + di) * W + w.left + dj];
            if (minignn_takes_over(v, mx)) mx = v;
        }
    double ss = 0.0, tt = 0.0;
    for (int di = w.r0; di < w.r1; ++di)
        for (int dj = w.c0; dj < w.c1; ++dj) {
            const int q = (w.top + di) * W + w.left + dj;
            const double ev = lip_e((double)lp[q], mx);
            ss += ev;
            if (ev != 0.0) tt += ev * (double)xp[q];
        }
    *m = mx;
    *s = ss;
    *t = tt;
}

template <class T>
__device__ void lippool2d_fwd(const T* __restrict__ x, const T* __restrict__ lg, int NC, int H, int W, int Ho, int Wo,
                              int kh, int kw, int sh, int sw, int ph, int pw, T* __restrict__ y) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * Ho * Wo) {
        const LipWin w = lip_window(i, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw);
        const long long base = w.plane * H * W;
        double m, s, t;
        lip_softmax(x + base, lg + base, W, w, &m, &s, &t);
        y[i] = (T)(t / s);
    }
}

// Per window: stats[3 o] = m, stats[3 o + 1] = gy / S, stats[3 o + 2] = y.
template <class T>
__device__ void lippool2d_bwd_win(const T* __restrict__ x, const T* __restrict__ lg, const T* __restrict__ gy, int NC,
                                  int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                  double* __restrict__ stats) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * Ho * Wo) {
        const LipWin w = lip_window(i, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw);
        const long long base = w.plane * H * W;
        double m, s, t;
        lip_softmax(x + base, lg + base, W, w, &m, &s, &t);
        stats[3 * i] = m;
        stats[3 * i + 1] = (double)gy[i] / s;
        stats[3 * i + 2] = t / s;
    }
}

template <class T>
__device__ void lippool2d_bwd_gx(const T* __restrict__ x, const T* __restrict__ lg, const double* __restrict__ stats,
                                 int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                 T* __restrict__ gx, T* __restrict__ gl) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * H * W) {
        const int w = (int)(i % W), h = (int)((i / W) % H);
        const long long plane = i / ((long long)H * W);
        const double v = (double)x[i], l = (double)lg[i];
        int oh0, oh1, ow0, ow1;
        minignn_windows_of(h, kh, sh, ph, Ho, &oh0, &oh1);
        minignn_windows_of(w, kw, sw, pw, Wo, &ow0, &ow1);
        double sx = 0.0, sl = 0.0;
        for (int oh = oh0; oh < oh1; ++oh)
            for (int ow = ow0; ow < ow1; ++ow) {
                const long long o = (plane * Ho + oh) * Wo + ow;
                const double ev = lip_e(l, stats[3 * o]);
                if (ev != 0.0) {
                    const double gw = stats[3 * o + 1] * ev;
                    sx += gw;
                    sl += gw * (v - stats[3 * o + 2]);
                }
            }
        gx[i] = (T)sx;
        gl[i] = (T)sl;
    }
}

// The entry points, one per dtype. Arguments: the arrays, then (N*C, H, W, Ho, Wo, kh, kw, sh, sw,
// ph, pw) as int32, then the outputs; the backward's per-window statistics are double for both.
extern "C" __global__ void lippool2d_fwd_gpu_f32(const float* __restrict__ x, const float* __restrict__ lg, int NC,
                                                 int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph,
                                                 int pw, float* __restrict__ y) {
    lippool2d_fwd(x, lg, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y);
}
extern "C" __global__ void lippool2d_fwd_gpu_f64(const double* __restrict__ x, const double* __restrict__ lg, int NC,
                                                 int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph,
                                                 int pw, double* __restrict__ y) {
    lippool2d_fwd(x, lg, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y);
}
extern "C" __global__ void lippool2d_bwd_win_gpu_f32(const float* __restrict__ x, const float* __restrict__ lg,
                                                     const float* __restrict__ gy, int NC, int H, int W, int Ho,
                                                     int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                     double* __restrict__ stats) {
    lippool2d_bwd_win(x, lg, gy, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, stats);
}
extern "C" __global__ void lippool2d_bwd_win_gpu_f64(const double* __restrict__ x, const double* __restrict__ lg,
                                                     const double* __restrict__ gy, int NC, int H, int W, int Ho,
                                                     int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                     double* __restrict__ stats) {
    lippool2d_bwd_win(x, lg, gy, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, stats);
}
extern "C" __global__ void lippool2d_bwd_gx_gpu_f32(const float* __restrict__ x, const float* __restrict__ lg,
                                                    const double* __restrict__ stats, int NC, int H, int W, int Ho,
                                                    int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                    float* __restrict__ gx, float* __restrict__ gl) {
    lippool2d_bwd_gx(x, lg, stats, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, gx, gl);
}
extern "C" __global__ void lippool2d_bwd_gx_gpu_f64(const double* __restrict__ x, const double* __restrict__ lg,
                                                    const double* __restrict__ stats, int NC, int H, int W, int Ho,
                                                    int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                    double* __restrict__ gx, double* __restrict__ gl) {
    lippool2d_bwd_gx(x, lg, stats, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, gx, gl);
}
