// Detail-preserving pooling on the GPU (NCHW, k x k windows at stride k): the CUDA mirror of
// layers/dpp/cpu.py. gamma and alpha are (N, C) arrays (the glue broadcasts the other forms).
//
//   forward   dpp_pool2d_fwd_gpu_*  one thread per output window: y
//   backward  dpp_pool2d_bwd_gpu_*  one thread per output window: it writes the gradient of the
//                                   window's own k x k cells (windows do not overlap, so no other
//                                   thread touches them) and 0 at the trailing cells in no window
//                                   that it owns (the last window of a row owns the columns right
//                                   of it, the last row of windows the rows below it), and its
//                                   terms gy dy/dgamma and gy dy/dalpha, which the glue sums over
//                                   (Ho, Wo) with an xp reduction
//
// Every thread writes only its own outputs (no atomics): results are deterministic.
//
// The window arithmetic, all in double whatever T (see cpu.py's docstring): m = mean I,
// e_q = d_q ("sym") or ReLU(d_q) ("asym"), v_q = e_q^2 + eps, V = mean v, l_q = log(v_q / V),
// p_q = exp(gamma l_q), S = sum p + n alpha, y = sum I (p + alpha) / S; backward a_q = (I_q - y) / S,
// dgamma = gy sum a_q p_q l_q, dalpha = gy sum a_q, c_q = gamma a_q p_q,
// gd_q = (c_q / v_q - mean(c) / V) 2 e_q, gx_q = gy ((p_q + alpha) / S + gd_q - mean(gd)).
// The general-k bodies recompute a cell's e, v and p in each pass over the window (no scratch).
#include "common.cuh"

#define DPP_EPS 1e-3

__device__ __forceinline__ double dpp_emph(double d, int asym) { return (asym && d < 0.0) ? 0.0 : d; }

// The window of output o: its plane, its top-left cell's offset in the plane, and its (n, c) index.
struct DppWin {
    long long plane;
    int oh, ow;
};

__device__ __forceinline__ DppWin dpp_window(long long o, int Ho, int Wo) {
    DppWin w;
    w.ow = (int)(o % Wo);
    w.oh = (int)((o / Wo) % Ho);
    w.plane = o / ((long long)Ho * Wo);
    return w;
}

// The per-window statistics shared by forward and backward: m, 1/V, S^-1 and y.
struct DppStats {
    double m, iv, inv_s, y;
};

template <class T>
__device__ __forceinline__ DppStats dpp_stats(const T* xp, int W, int k, int asym, double gm, double al) {
    DppStats s;
    const int kk = k * k;
    double m = 0.0;
    for (int q = 0; q < kk; ++q) m += (double)xp[(q / k) * W + q % k];
    m /= kk;
    double vs = 0.0;
    for (int q = 0; q < kk; ++q) {
        const double e = dpp_emph((double)xp[(q / k) * W + q % k] - m, asym);
        vs += e * e + DPP_EPS;
    }
    const double iv = kk / vs;
    double S = 0.0, t = 0.0;
    for (int q = 0; q < kk; ++q) {
        const double xv = (double)xp[(q / k) * W + q % k];
        const double e = dpp_emph(xv - m, asym);
        const double w = exp(gm * log((e * e + DPP_EPS) * iv)) + al;
        S += w;
        t += xv * w;
    }
    s.m = m;
    s.iv = iv;
    s.inv_s = 1.0 / S;
    s.y = t / S;
    return s;
}

template <class T>
__device__ void dpp_pool2d_fwd(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ alpha,
                               int NC, int H, int W, int Ho, int Wo, int k, int asym, T* __restrict__ y) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * Ho * Wo) {
        const DppWin w = dpp_window(i, Ho, Wo);
        const T* xp = x + w.plane * H * W + (long long)w.oh * k * W + (long long)w.ow * k;
        const double gm = (double)gamma[w.plane], al = (double)alpha[w.plane];
        y[i] = (T)dpp_stats(xp, W, k, asym, gm, al).y;
    }
}

template <class T>
__device__ void dpp_pool2d_bwd(const T* __restrict__ x, const T* __restrict__ gamma, const T* __restrict__ alpha,
                               const T* __restrict__ gy, int NC, int H, int W, int Ho, int Wo, int k, int asym,
                               T* __restrict__ gx, double* __restrict__ dgw, double* __restrict__ daw) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * Ho * Wo) {
        const DppWin w = dpp_window(i, Ho, Wo);
        const long long corner = w.plane * H * W + (long long)w.oh * k * W + (long long)w.ow * k;
        const T* xp = x + corner;
        T* gp = gx + corner;
        const double gm = (double)gamma[w.plane], al = (double)alpha[w.plane];
        const double g = (double)gy[i];
        const int kk = k * k;
        const DppStats s = dpp_stats(xp, W, k, asym, gm, al);
        // pass 1: the parameter terms and mean(c)
        double sdg = 0.0, sda = 0.0, sq = 0.0;
        for (int q = 0; q < kk; ++q) {
            const double xv = (double)xp[(q / k) * W + q % k];
            const double e = dpp_emph(xv - s.m, asym);
            const double l = log((e * e + DPP_EPS) * s.iv);
            const double a = (xv - s.y) * s.inv_s;
            const double aq = a * exp(gm * l);
            sdg += aq * l;
            sda += a;
            sq += aq;
        }
        const double cbar_v = gm * sq / kk * s.iv;
        // pass 2: mean(gd); pass 3: gx
        double sd = 0.0;
        for (int q = 0; q < kk; ++q) {
            const double xv = (double)xp[(q / k) * W + q % k];
            const double e = dpp_emph(xv - s.m, asym);
            const double v = e * e + DPP_EPS;
            const double p = exp(gm * log(v * s.iv));
            sd += (gm * (xv - s.y) * s.inv_s * p / v - cbar_v) * 2.0 * e;
        }
        const double dbar = sd / kk;
        for (int q = 0; q < kk; ++q) {
            const double xv = (double)xp[(q / k) * W + q % k];
            const double e = dpp_emph(xv - s.m, asym);
            const double v = e * e + DPP_EPS;
            const double p = exp(gm * log(v * s.iv));
            const double gd = (gm * (xv - s.y) * s.inv_s * p / v - cbar_v) * 2.0 * e;
            gp[(q / k) * W + q % k] = (T)(g * ((p + al) * s.inv_s + gd - dbar));
        }
        // the trailing cells this window owns: right of the last window of a row, below the last row
        const int r1 = w.oh == Ho - 1 ? H - w.oh * k : k;
        const int c1 = w.ow == Wo - 1 ? W - w.ow * k : k;
        for (int di = 0; di < r1; ++di)
            for (int dj = (di < k ? k : 0); dj < c1; ++dj) gp[di * W + dj] = (T)0;
        dgw[i] = g * sdg;
        daw[i] = g * sda;
    }
}

// 2x2 fast path: the four cells in registers.
template <class T>
__device__ void dpp_pool2d_fwd_2x2(const T* __restrict__ x, const T* __restrict__ gamma,
                                   const T* __restrict__ alpha, int NC, int H, int W, int Ho, int Wo, int asym,
                                   T* __restrict__ y) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * Ho * Wo) {
        const DppWin w = dpp_window(i, Ho, Wo);
        const T* xp = x + w.plane * H * W + (long long)w.oh * 2 * W + (long long)w.ow * 2;
        const double gm = (double)gamma[w.plane], al = (double)alpha[w.plane];
        double I[4] = {(double)xp[0], (double)xp[1], (double)xp[W], (double)xp[W + 1]};
        const double m = ((I[0] + I[1]) + (I[2] + I[3])) * 0.25;
        double v[4];
        for (int q = 0; q < 4; ++q) {
            const double e = dpp_emph(I[q] - m, asym);
            v[q] = e * e + DPP_EPS;
        }
        const double iv = 4.0 / ((v[0] + v[1]) + (v[2] + v[3]));
        double S = 4.0 * al, t = 0.0;
        for (int q = 0; q < 4; ++q) {
            const double p = exp(gm * log(v[q] * iv));
            S += p;
            t += I[q] * (p + al);
        }
        y[i] = (T)(t / S);
    }
}

template <class T>
__device__ void dpp_pool2d_bwd_2x2(const T* __restrict__ x, const T* __restrict__ gamma,
                                   const T* __restrict__ alpha, const T* __restrict__ gy, int NC, int H, int W,
                                   int Ho, int Wo, int asym, T* __restrict__ gx, double* __restrict__ dgw,
                                   double* __restrict__ daw) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * Ho * Wo) {
        const DppWin w = dpp_window(i, Ho, Wo);
        const long long corner = w.plane * H * W + (long long)w.oh * 2 * W + (long long)w.ow * 2;
        const T* xp = x + corner;
        T* gp = gx + corner;
        const double gm = (double)gamma[w.plane], al = (double)alpha[w.plane];
        const double g = (double)gy[i];
        double I[4] = {(double)xp[0], (double)xp[1], (double)xp[W], (double)xp[W + 1]};
        const double m = ((I[0] + I[1]) + (I[2] + I[3])) * 0.25;
        double e[4], v[4], l[4], p[4];
        for (int q = 0; q < 4; ++q) {
            e[q] = dpp_emph(I[q] - m, asym);
            v[q] = e[q] * e[q] + DPP_EPS;
        }
        const double iv = 4.0 / ((v[0] + v[1]) + (v[2] + v[3]));
        double S = 4.0 * al, t = 0.0;
        for (int q = 0; q < 4; ++q) {
            l[q] = log(v[q] * iv);
            p[q] = exp(gm * l[q]);
            S += p[q];
            t += I[q] * (p[q] + al);
        }
        const double inv_s = 1.0 / S, yv = t / S;
        double sdg = 0.0, sda = 0.0, sq = 0.0, aq[4];
        for (int q = 0; q < 4; ++q) {
            const double a = (I[q] - yv) * inv_s;
            aq[q] = a * p[q];
            sdg += aq[q] * l[q];
            sda += a;
            sq += aq[q];
        }
        const double cbar_v = gm * sq * 0.25 * iv;
        double gd[4], sd = 0.0;
        for (int q = 0; q < 4; ++q) {
            gd[q] = (gm * aq[q] / v[q] - cbar_v) * 2.0 * e[q];
            sd += gd[q];
        }
        const double dbar = sd * 0.25;
        gp[0] = (T)(g * ((p[0] + al) * inv_s + gd[0] - dbar));
        gp[1] = (T)(g * ((p[1] + al) * inv_s + gd[1] - dbar));
        gp[W] = (T)(g * ((p[2] + al) * inv_s + gd[2] - dbar));
        gp[W + 1] = (T)(g * ((p[3] + al) * inv_s + gd[3] - dbar));
        const int r1 = w.oh == Ho - 1 ? H - w.oh * 2 : 2;      // the odd last row / column
        const int c1 = w.ow == Wo - 1 ? W - w.ow * 2 : 2;
        if (c1 > 2) {
            gp[2] = (T)0;
            gp[W + 2] = (T)0;
        }
        if (r1 > 2)
            for (int dj = 0; dj < c1; ++dj) gp[2 * W + dj] = (T)0;
        dgw[i] = g * sdg;
        daw[i] = g * sda;
    }
}

// The entry points: one per dtype. Arguments: x, gamma, alpha (N, C), (gy,) then (N*C, H, W, Ho, Wo,
// k, asym) as int32 (the 2x2 ones without k), then the outputs; the per-window parameter terms
// are double for both dtypes.
extern "C" __global__ void dpp_pool2d_fwd_gpu_f32(const float* __restrict__ x, const float* __restrict__ gamma,
                                          const float* __restrict__ alpha, int NC, int H, int W, int Ho, int Wo, int k,
                                          int asym, float* __restrict__ y) {
    dpp_pool2d_fwd(x, gamma, alpha, NC, H, W, Ho, Wo, k, asym, y);
}
extern "C" __global__ void dpp_pool2d_bwd_gpu_f32(const float* __restrict__ x, const float* __restrict__ gamma,
                                          const float* __restrict__ alpha, const float* __restrict__ gy, int NC, int H,
                                          int W, int Ho, int Wo, int k, int asym, float* __restrict__ gx,
                                          double* __restrict__ dgw, double* __restrict__ daw) {
    dpp_pool2d_bwd(x, gamma, alpha, gy, NC, H, W, Ho, Wo, k, asym, gx, dgw, daw);
}
extern "C" __global__ void dpp_pool2d_fwd_2x2_gpu_f32(const float* __restrict__ x, const float* __restrict__ gamma,
                                              const float* __restrict__ alpha, int NC, int H, int W, int Ho, int Wo,
                                              int asym, float* __restrict__ y) {
    dpp_pool2d_fwd_2x2(x, gamma, alpha, NC, H, W, Ho, Wo, asym, y);
}
extern "C" __global__ void dpp_pool2d_bwd_2x2_gpu_f32(const float* __restrict__ x, const float* __restrict__ gamma,
                                              const float* __restrict__ alpha, const float* __restrict__ gy, int NC,
                                              int H, int W, int Ho, int Wo, int asym, float* __restrict__ gx,
                                              double* __restrict__ dgw, double* __restrict__ daw) {
    dpp_pool2d_bwd_2x2(x, gamma, alpha, gy, NC, H, W, Ho, Wo, asym, gx, dgw, daw);
}
extern "C" __global__ void dpp_pool2d_fwd_gpu_f64(const double* __restrict__ x, const double* __restrict__ gamma,
                                          const double* __restrict__ alpha, int NC, int H, int W, int Ho, int Wo, int k,
                                          int asym, double* __restrict__ y) {
    dpp_pool2d_fwd(x, gamma, alpha, NC, H, W, Ho, Wo, k, asym, y);
}
extern "C" __global__ void dpp_pool2d_bwd_gpu_f64(const double* __restrict__ x, const double* __restrict__ gamma,
                                          const double* __restrict__ alpha, const double* __restrict__ gy, int NC, int H,
                                          int W, int Ho, int Wo, int k, int asym, double* __restrict__ gx,
                                          double* __restrict__ dgw, double* __restrict__ daw) {
    dpp_pool2d_bwd(x, gamma, alpha, gy, NC, H, W, Ho, Wo, k, asym, gx, dgw, daw);
}
extern "C" __global__ void dpp_pool2d_fwd_2x2_gpu_f64(const double* __restrict__ x, const double* __restrict__ gamma,
                                              const double* __restrict__ alpha, int NC, int H, int W, int Ho, int Wo,
                                              int asym, double* __restrict__ y) {
    dpp_pool2d_fwd_2x2(x, gamma, alpha, NC, H, W, Ho, Wo, asym, y);
}
extern "C" __global__ void dpp_pool2d_bwd_2x2_gpu_f64(const double* __restrict__ x, const double* __restrict__ gamma,
                                              const double* __restrict__ alpha, const double* __restrict__ gy, int NC,
                                              int H, int W, int Ho, int Wo, int asym, double* __restrict__ gx,
                                              double* __restrict__ dgw, double* __restrict__ daw) {
    dpp_pool2d_bwd_2x2(x, gamma, alpha, gy, NC, H, W, Ho, Wo, asym, gx, dgw, daw);
}
