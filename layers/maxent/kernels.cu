// Max-entropy pooling on the GPU (NCHW): the CUDA mirror of layers/maxent/cpu.py's careful
// (generic) window arithmetic, for every lam form, rho form and window geometry.
//
//   forward   maxent_pool2d_fwd_gpu_*      one thread per output window: y
//   backward  maxent_pool2d_bwd_win_gpu_*  one thread per output window: the window's softmax
//                                          statistics (shift cell X_r, max logit m, gy / sum e,
//                                          t = Y - X_r), its dlam and (want_grho) its drho per
//                                          offset; the glue sums those over positions with xp
//             maxent_pool2d_bwd_gx_gpu_*   one thread per input cell: sum over the windows that
//                                          hold it of gy W_q (1 + lam (X_q - Y)), each weight
//                                          recomputed from that window's statistics (the same
//                                          function as in the window kernel, so the same value)
//
// Every thread writes only its own outputs (no atomics): results are deterministic.
//
// The window arithmetic (see cpu.py's docstring): the shift cell X_r is the cell with the largest
// logit lam X + rho (the first of ties, a NaN logit never wins, the first real cell if none does);
// d_q = X_q - X_r (0 for a cell equal to it, also inf == inf); z_q = lam d_q + rho_q (lam d_q = 0
// when lam = 0, also for an infinite d_q: average pooling); m = the running max of z over the
// offsets in row-major order, padded offsets at -inf (the CPU's order, NaN behaviour included);
// e_q = 1 where z_q == m (also m = +inf) else exp(z_q - m); s = sum e; t = sum_q e_q d_q / s over
// cells of nonzero weight (a cell of weight 0 contributes 0, not 0 * inf); Y = X_r + t. All of
// it in T, as on the CPU; sums over windows (gx) in double. float32 exponentials use the CPU's
// polynomial (exp_nonpos_f32): the same weights, the same underflow to 0 below exp(-87.33).
#include "common.cuh"
#include "_window.cuh"

// exp(v) for v <= 0: cpu.py's exp_nonpos_f32 (Cody-Waite range reduction, degree-7 Taylor
// polynomial, 2^n from the exponent bits; 0 below -87.33 and for -inf, NaN stays NaN) for float,
// the math library's exp for double.
__device__ __forceinline__ float maxent_exp(float v) {
    const float lo = (float)-87.33;
    const float u = v > lo ? v : lo;                  // NaN -> lo, so the conversion is defined
    const float nf = floor(u * (float)1.4426950408889634 + 0.5f);
    const float r = (u - nf * (float)0.693145751953125) - nf * (float)1.4286068203094173e-06;
    float p = (float)(1.0 / 5040);
    p = p * r + (float)(1.0 / 720);
    p = p * r + (float)(1.0 / 120);
    p = p * r + (float)(1.0 / 24);
    p = p * r + (float)(1.0 / 6);
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const float nb = nf + 127.0f < 255.0f ? nf + 127.0f : 255.0f;   // v = +inf (a NaN window): no UB
    const float scale = __int_as_float((int)(nb * 8388608.0f));
    const float res = v >= lo ? p * scale : 0.0f;
    return v == v ? res : v;
}
__device__ __forceinline__ double maxent_exp(double v) { return exp(v); }

// The careful helpers of cpu.py (_dev, _logit, _weight, _kept).
template <class T> __device__ __forceinline__ T maxent_dev(T v, T xr) { return v != xr ? v - xr : T(0); }
template <class T> __device__ __forceinline__ T maxent_logit(T lam, T d, T r) {
    return (lam != T(0) ? lam * d : T(0)) + r;
}
template <class T> __device__ __forceinline__ T maxent_weight(T z, T m) { return z == m ? T(1) : maxent_exp(z - m); }
template <class T> __device__ __forceinline__ T maxent_kept(T e, T v) { return e != T(0) ? v : T(0); }

// The geometry of one launch: shapes of x, y, lam4 (Nl, Cl, Hl, Wl) and rho3 (Nr, Cr, K), window.
struct MaxentGeom {
    int N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, Nl, Cl, Hl, Wl, Nr, Cr;
};

// One window's indices: its plane, first row and column (may be in the padding), real offsets
// [r0, r1) x [c0, c1), and where its lam and rho are.
struct MaxentWin {
    long long plane;          // n * C + c
    int top, left, r0, r1, c0, c1;
    long long lam_at, rho_at;
};

__device__ __forceinline__ MaxentWin maxent_window(const MaxentGeom& g, long long o) {
    MaxentWin w;
    const int ow = (int)(o % g.Wo), oh = (int)((o / g.Wo) % g.Ho);
    w.plane = o / ((long long)g.Ho * g.Wo);
    const int n = (int)(w.plane / g.C), c = (int)(w.plane % g.C);
    w.top = oh * g.sh - g.ph;
    w.left = ow * g.sw - g.pw;
    minignn_real_offsets(w.top, g.kh, g.H, &w.r0, &w.r1);
    minignn_real_offsets(w.left, g.kw, g.W, &w.c0, &w.c1);
    const long long nl = g.Nl > 1 ? n : 0, cl = g.Cl > 1 ? c : 0;
    const long long hl = g.Hl > 1 ? oh : 0, wl = g.Wl > 1 ? ow : 0;
    w.lam_at = ((nl * g.Cl + cl) * g.Hl + hl) * g.Wl + wl;
    w.rho_at = ((long long)(g.Nr > 1 ? n : 0) * g.Cr + (g.Cr > 1 ? c : 0)) * ((long long)g.kh * g.kw);
    return w;
}

// The softmax statistics of a window: shift cell xr, max logit m, sum of weights s and
// t = Y - xr = sum_q (e_q d_q) / s.
template <class T> struct MaxentStats {
    T xr, m, s, t;
};

template <class T>
__device__ __forceinline__ MaxentStats<T> maxent_stats(const T* __restrict__ xp, const T* __restrict__ rho, T lam,
                                                       const MaxentGeom& g, const MaxentWin& w) {
    MaxentStats<T> st;
    const T ninf = -minignn_inf<T>();
    // the shift cell: the largest logit lam X + rho, the first of ties; NaN never wins
    T best = ninf;
    st.xr = xp[(long long)(w.top + w.r0) * g.W + w.left + w.c0];
    for (int di = w.r0; di < w.r1; ++di)
        for (int dj = w.c0; dj < w.c1; ++dj) {
            const T v = xp[(long long)(w.top + di) * g.W + w.left + dj];
            const T k = lam * v + rho[di * g.kw + dj];
            if (k > best) { best = k; st.xr = v; }
        }
    // the max logit, over every offset in row-major order (padding at -inf), as the CPU runs it
    st.m = ninf;
    for (int di = 0; di < g.kh; ++di)
        for (int dj = 0; dj < g.kw; ++dj) {
            T z = ninf;
            if (di >= w.r0 && di < w.r1 && dj >= w.c0 && dj < w.c1)
                z = maxent_logit(lam, maxent_dev(xp[(long long)(w.top + di) * g.W + w.left + dj], st.xr),
                                 rho[di * g.kw + dj]);
            st.m = st.m > z ? st.m : z;
        }
    // the sum of the weights, then the weighted mean of the deviations (normalised before the sum)
    st.s = T(0);
    for (int di = w.r0; di < w.r1; ++di)
        for (int dj = w.c0; dj < w.c1; ++dj) {
            const T d = maxent_dev(xp[(long long)(w.top + di) * g.W + w.left + dj], st.xr);
            st.s += maxent_weight(maxent_logit(lam, d, rho[di * g.kw + dj]), st.m);
        }
    st.t = T(0);
    for (int di = w.r0; di < w.r1; ++di)
        for (int dj = w.c0; dj < w.c1; ++dj) {
            const T d = maxent_dev(xp[(long long)(w.top + di) * g.W + w.left + dj], st.xr);
            const T e = maxent_weight(maxent_logit(lam, d, rho[di * g.kw + dj]), st.m);
            st.t += e * maxent_kept(e, d) / st.s;
        }
    return st;
}

// y[n, c, oh, ow] = X_r + t.
template <class T>
__device__ void maxent_pool2d_fwd(const T* __restrict__ x, const T* __restrict__ lam4, const T* __restrict__ rho3,
                                  const MaxentGeom g, T* __restrict__ y) {
    MINIGNN_GRID_STRIDE(o, (long long)g.N * g.C * g.Ho * g.Wo) {
        const MaxentWin w = maxent_window(g, o);
        const MaxentStats<T> st = maxent_stats(x + w.plane * g.H * g.W, rho3 + w.rho_at, lam4[w.lam_at], g, w);
        y[o] = st.xr + st.t;
    }
}

// Per window o: stats[o] = (X_r, m, gy / s, t); glam[o] = gy sum_q W_q (X_q - Y)^2 (Eq. 9);
// with want_grho, grho[o, q] = gy W_q (X_q - Y) for every offset q (0 at padded ones; Eq. 10).
template <class T>
__device__ void maxent_pool2d_bwd_win(const T* __restrict__ x, const T* __restrict__ lam4, const T* __restrict__ rho3,
                                      const T* __restrict__ gy, const MaxentGeom g, int want_grho,
                                      T* __restrict__ stats, T* __restrict__ glam, T* __restrict__ grho) {
    const int K = g.kh * g.kw;
    MINIGNN_GRID_STRIDE(o, (long long)g.N * g.C * g.Ho * g.Wo) {
        const MaxentWin w = maxent_window(g, o);
        const T* xp = x + w.plane * g.H * g.W;
        const T* rho = rho3 + w.rho_at;
        const T lam = lam4[w.lam_at];
        const MaxentStats<T> st = maxent_stats(xp, rho, lam, g, w);
        const T gs = gy[o] / st.s;                    // gy / sum e: e_q gs = gy W_q
        T gl = T(0);
        T* gr = grho + o * K;
        for (int di = 0; di < g.kh; ++di)
            for (int dj = 0; dj < g.kw; ++dj) {
                T ad = T(0);
                if (di >= w.r0 && di < w.r1 && dj >= w.c0 && dj < w.c1) {
                    const T d = maxent_dev(xp[(long long)(w.top + di) * g.W + w.left + dj], st.xr);
                    const T e = maxent_weight(maxent_logit(lam, d, rho[di * g.kw + dj]), st.m);
                    const T dv = d - st.t;            // X_q - Y, two-pass and shifted
                    ad = maxent_kept(e, e * gs * dv);
                    gl += maxent_kept(e, ad * dv);
                }
                if (want_grho) gr[di * g.kw + dj] = ad;
            }
        stats[4 * o] = st.xr;
        stats[4 * o + 1] = st.m;
        stats[4 * o + 2] = gs;
        stats[4 * o + 3] = st.t;
        glam[o] = gl;
    }
}

// gx[n, c, h, w] = sum over the windows holding the cell of gy W_q (1 + lam (X_q - Y)) (Eq. 8),
// in double; 0 for a cell in no window.
template <class T>
__device__ void maxent_pool2d_bwd_gx(const T* __restrict__ x, const T* __restrict__ lam4, const T* __restrict__ rho3,
                                     const T* __restrict__ stats, const MaxentGeom g, T* __restrict__ gx) {
    MINIGNN_GRID_STRIDE(i, (long long)g.N * g.C * g.H * g.W) {
        const int wc = (int)(i % g.W), h = (int)((i / g.W) % g.H);
        const long long plane = i / ((long long)g.H * g.W);
        const int n = (int)(plane / g.C), c = (int)(plane % g.C);
        const T v = x[i];
        const T* rho = rho3 + ((long long)(g.Nr > 1 ? n : 0) * g.Cr + (g.Cr > 1 ? c : 0)) * ((long long)g.kh * g.kw);
        const long long nl = g.Nl > 1 ? n : 0, cl = g.Cl > 1 ? c : 0;
        int oh0, oh1, ow0, ow1;
        minignn_windows_of(h, g.kh, g.sh, g.ph, g.Ho, &oh0, &oh1);
        minignn_windows_of(wc, g.kw, g.sw, g.pw, g.Wo, &ow0, &ow1);
        double acc = 0.0;
        for (int oh = oh0; oh < oh1; ++oh)
            for (int ow = ow0; ow < ow1; ++ow) {
                const long long o = (plane * g.Ho + oh) * g.Wo + ow;
                const T xr = stats[4 * o], m = stats[4 * o + 1], gs = stats[4 * o + 2], t = stats[4 * o + 3];
                const T lam = lam4[((nl * g.Cl + cl) * g.Hl + (g.Hl > 1 ? oh : 0)) * g.Wl + (g.Wl > 1 ? ow : 0)];
                const int q = (h - (oh * g.sh - g.ph)) * g.kw + (wc - (ow * g.sw - g.pw));
                const T d = maxent_dev(v, xr);
                const T e = maxent_weight(maxent_logit(lam, d, rho[q]), m);
                const T a = e * gs;                   // gy W_q
                const T ad = maxent_kept(e, a * (d - t));
                acc += (double)(a + maxent_logit(lam, ad, T(0)));
            }
        gx[i] = (T)acc;
    }
}

// The entry points. Arguments: the arrays, then (N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw) and
// the broadcast shapes (Nl, Cl, Hl, Wl) of lam4 and (Nr, Cr) of rho3, as int32.
extern "C" __global__ void maxent_pool2d_fwd_gpu_f32(const float* __restrict__ x, const float* __restrict__ lam4, const float* __restrict__ rho3,
                                                  int N, int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                  int Nl, int Cl, int Hl, int Wl, int Nr, int Cr, float* __restrict__ y) {
    maxent_pool2d_fwd(x, lam4, rho3, MaxentGeom{N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, Nl, Cl, Hl, Wl, Nr, Cr}, y);
}
extern "C" __global__ void maxent_pool2d_fwd_gpu_f64(const double* __restrict__ x, const double* __restrict__ lam4, const double* __restrict__ rho3,
                                                  int N, int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                  int Nl, int Cl, int Hl, int Wl, int Nr, int Cr, double* __restrict__ y) {
    maxent_pool2d_fwd(x, lam4, rho3, MaxentGeom{N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, Nl, Cl, Hl, Wl, Nr, Cr}, y);
}
extern "C" __global__ void maxent_pool2d_bwd_win_gpu_f32(const float* __restrict__ x, const float* __restrict__ lam4, const float* __restrict__ rho3,
                                                      const float* __restrict__ gy,
                                                      int N, int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                      int Nl, int Cl, int Hl, int Wl, int Nr, int Cr, int want_grho,
                                                      float* __restrict__ stats, float* __restrict__ glam, float* __restrict__ grho) {
    maxent_pool2d_bwd_win(x, lam4, rho3, gy, MaxentGeom{N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, Nl, Cl, Hl, Wl, Nr, Cr},
                          want_grho, stats, glam, grho);
}
extern "C" __global__ void maxent_pool2d_bwd_win_gpu_f64(const double* __restrict__ x, const double* __restrict__ lam4, const double* __restrict__ rho3,
                                                      const double* __restrict__ gy,
                                                      int N, int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                      int Nl, int Cl, int Hl, int Wl, int Nr, int Cr, int want_grho,
                                                      double* __restrict__ stats, double* __restrict__ glam, double* __restrict__ grho) {
    maxent_pool2d_bwd_win(x, lam4, rho3, gy, MaxentGeom{N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, Nl, Cl, Hl, Wl, Nr, Cr},
                          want_grho, stats, glam, grho);
}
extern "C" __global__ void maxent_pool2d_bwd_gx_gpu_f32(const float* __restrict__ x, const float* __restrict__ lam4, const float* __restrict__ rho3,
                                                     const float* __restrict__ stats,
                                                     int N, int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                     int Nl, int Cl, int Hl, int Wl, int Nr, int Cr, float* __restrict__ gx) {
    maxent_pool2d_bwd_gx(x, lam4, rho3, stats, MaxentGeom{N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, Nl, Cl, Hl, Wl, Nr, Cr}, gx);
}
extern "C" __global__ void maxent_pool2d_bwd_gx_gpu_f64(const double* __restrict__ x, const double* __restrict__ lam4, const double* __restrict__ rho3,
                                                     const double* __restrict__ stats,
                                                     int N, int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                     int Nl, int Cl, int Hl, int Wl, int Nr, int Cr, double* __restrict__ gx) {
    maxent_pool2d_bwd_gx(x, lam4, rho3, stats, MaxentGeom{N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, Nl, Cl, Hl, Wl, Nr, Cr}, gx);
}
