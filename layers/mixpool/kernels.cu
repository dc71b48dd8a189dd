// Mixed and gated max-average pooling on the GPU (NCHW): y = gate max + (1 - gate) avg, the gate
// a[n, c] (mixed) or sigmoid(omega . x_R) (gated, K = kh*kw weights; K_omega = 0 selects mixed).
// One thread per output cell forwards, one per input cell backwards (it gathers the windows that
// hold it: no atomics, deterministic), and one per (plane, offset) for the per-plane partial sums
// of omega's gradient. The math is that of layers/mixpool/__init__.py; geometry from _window.cuh.
#include "common.cuh"
#include "_window.cuh"

__device__ __forceinline__ double minignn_sigmoid(double z) {
    if (z >= 0) return 1.0 / (1.0 + exp(-z));
    const double e = exp(z);
    return e / (1.0 + e);
}

// a is (Na, Ca) with Na in {1, N} and Ca in {1, C}: the entry of plane (n, c).
template <class T>
__device__ __forceinline__ T mixpool_a(const T* a, int Na, int Ca, long long plane, int C) {
    const int n = (int)(plane / C), c = (int)(plane % C);
    return a[(Na > 1 ? n : 0) * Ca + (Ca > 1 ? c : 0)];
}

template <class T, class A>
__device__ void mixpool2d_fwd(const T* __restrict__ x, const T* __restrict__ a, int Na, int Ca,
                              const T* __restrict__ omega, int K_omega, int NC, int C, int H, int W, int Ho, int Wo,
                              int kh, int kw, int sh, int sw, int ph, int pw, T* __restrict__ y, T* __restrict__ d,
                              T* __restrict__ g, A* __restrict__ arg) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * Ho * Wo) {
        const int ow = (int)(i % Wo), oh = (int)((i / Wo) % Ho);
        const long long plane = i / ((long long)Ho * Wo);
        const T* xp = x + plane * H * W;
        const int h0 = oh * sh - ph, w0 = ow * sw - pw;
        int r0, r1, c0, c1;
        minignn_real_offsets(h0, kh, H, &r0, &r1);
        minignn_real_offsets(w0, kw, W, &c0, &c1);
        T best = xp[(h0 + r0) * W + w0 + c0];
        int bi = r0 * kw + c0;
        double s = 0.0, z = 0.0;
        for (int di = r0; di < r1; ++di)
            for (int dj = c0; dj < c1; ++dj) {
                const T v = xp[(h0 + di) * W + w0 + dj];
                s += (double)v;
                if (K_omega > 0) z += (double)omega[di * kw + dj] * (double)v;
                if (minignn_takes_over(v, best)) { best = v; bi = di * kw + dj; }
            }
        const double mean = s / ((r1 - r0) * (c1 - c0));
        double gate;
        if (K_omega > 0) {
            gate = (double)(T)minignn_sigmoid(z);      // the gate as stored: the backward reads it
            g[i] = (T)gate;
        } else {
            gate = (double)mixpool_a(a, Na, Ca, plane, C);
        }
        y[i] = (T)(gate * (double)best + (1.0 - gate) * mean);
        d[i] = (T)((double)best - mean);
        arg[i] = (A)bi;
    }
}

// gx[n, c, h, w] = sum over the windows holding the cell of gy (gate [argmax] + (1 - gate)/|R|
// + gated: d g (1 - g) omega[offset]).
template <class T, class A>
__device__ void mixpool2d_bwd(const T* __restrict__ gy, const T* __restrict__ a, int Na, int Ca,
                              const T* __restrict__ omega, int K_omega, const T* __restrict__ g,
                              const T* __restrict__ d, const A* __restrict__ arg, int NC, int C, int H, int W,
                              int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw, T* __restrict__ gx) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * H * W) {
        const int w = (int)(i % W), h = (int)((i / W) % H);
        const long long plane = i / ((long long)H * W);
        int oh0, oh1, ow0, ow1;
        minignn_windows_of(h, kh, sh, ph, Ho, &oh0, &oh1);
        minignn_windows_of(w, kw, sw, pw, Wo, &ow0, &ow1);
        const double av = K_omega > 0 ? 0.0 : (double)mixpool_a(a, Na, Ca, plane, C);
        double s = 0.0;
        for (int oh = oh0; oh < oh1; ++oh) {
            int r0, r1;
            minignn_real_offsets(oh * sh - ph, kh, H, &r0, &r1);
            for (int ow = ow0; ow < ow1; ++ow) {
                int c0, c1;
                minignn_real_offsets(ow * sw - pw, kw, W, &c0, &c1);
                const long long o = (plane * Ho + oh) * Wo + ow;
                const int q = (h - (oh * sh - ph)) * kw + (w - (ow * sw - pw));
                const double gv = (double)gy[o];
                const double gate = K_omega > 0 ? (double)g[o] : av;
                double coef = (1.0 - gate) / ((r1 - r0) * (c1 - c0));
                if ((int)arg[o] == q) coef += gate;
                if (K_omega > 0) coef += (double)d[o] * gate * (1.0 - gate) * (double)omega[q];
                s += gv * coef;
            }
        }
        gx[i] = (T)s;
    }
}

// gom[plane, q] = sum over the plane's windows whose offset q is real of gy d g (1 - g) x_q.
template <class T>
__device__ void gatedpool2d_gomega(const T* __restrict__ gy, const T* __restrict__ x, const T* __restrict__ g,
                                   const T* __restrict__ d, int NC, int H, int W, int Ho, int Wo, int kh, int kw,
                                   int sh, int sw, int ph, int pw, double* __restrict__ gom) {
    const int K = kh * kw;
    MINIGNN_GRID_STRIDE(i, (long long)NC * K) {
        const int q = (int)(i % K);
        const long long plane = i / K;
        const int di = q / kw, dj = q % kw;
        const T* xp = x + plane * H * W;
        double s = 0.0;
        for (int oh = 0; oh < Ho; ++oh) {
            const int r = oh * sh - ph + di;
            if (r < 0 || r >= H) continue;
            for (int ow = 0; ow < Wo; ++ow) {
                const int cc = ow * sw - pw + dj;
                if (cc < 0 || cc >= W) continue;
                const long long o = (plane * Ho + oh) * Wo + ow;
                const double gate = (double)g[o];
                s += (double)gy[o] * (double)d[o] * gate * (1.0 - gate) * (double)xp[r * W + cc];
            }
        }
        gom[i] = s;
    }
}

// The entry points: one per dtype and argmax type (int8, or int32 for windows of more than 127
// cells). Arguments: the arrays and parameters, then (N*C, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw).
extern "C" __global__ void mixpool2d_fwd_gpu_f32(const float* __restrict__ x, const float* __restrict__ a, int Na, int Ca, const float* __restrict__ omega, int K_omega, int NC, int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                 float* __restrict__ y, float* __restrict__ d, float* __restrict__ g, signed char* __restrict__ arg) {
    mixpool2d_fwd(x, a, Na, Ca, omega, K_omega, NC, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y, d, g, arg);
}
extern "C" __global__ void mixpool2d_fwd_gpu_f64(const double* __restrict__ x, const double* __restrict__ a, int Na, int Ca, const double* __restrict__ omega, int K_omega, int NC, int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                 double* __restrict__ y, double* __restrict__ d, double* __restrict__ g, signed char* __restrict__ arg) {
    mixpool2d_fwd(x, a, Na, Ca, omega, K_omega, NC, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y, d, g, arg);
}
extern "C" __global__ void mixpool2d_fwd_gpu_f32_i32(const float* __restrict__ x, const float* __restrict__ a, int Na, int Ca, const float* __restrict__ omega, int K_omega, int NC, int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                     float* __restrict__ y, float* __restrict__ d, float* __restrict__ g, int* __restrict__ arg) {
    mixpool2d_fwd(x, a, Na, Ca, omega, K_omega, NC, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y, d, g, arg);
}
extern "C" __global__ void mixpool2d_fwd_gpu_f64_i32(const double* __restrict__ x, const double* __restrict__ a, int Na, int Ca, const double* __restrict__ omega, int K_omega, int NC, int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                     double* __restrict__ y, double* __restrict__ d, double* __restrict__ g, int* __restrict__ arg) {
    mixpool2d_fwd(x, a, Na, Ca, omega, K_omega, NC, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y, d, g, arg);
}
extern "C" __global__ void mixpool2d_bwd_gpu_f32(const float* __restrict__ gy, const float* __restrict__ a, int Na, int Ca, const float* __restrict__ omega, int K_omega, const float* __restrict__ g, const float* __restrict__ d, const signed char* __restrict__ arg,
                                                 int NC, int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw, float* __restrict__ gx) {
    mixpool2d_bwd(gy, a, Na, Ca, omega, K_omega, g, d, arg, NC, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, gx);
}
extern "C" __global__ void mixpool2d_bwd_gpu_f64(const double* __restrict__ gy, const double* __restrict__ a, int Na, int Ca, const double* __restrict__ omega, int K_omega, const double* __restrict__ g, const double* __restrict__ d, const signed char* __restrict__ arg,
                                                 int NC, int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw, double* __restrict__ gx) {
    mixpool2d_bwd(gy, a, Na, Ca, omega, K_omega, g, d, arg, NC, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, gx);
}
extern "C" __global__ void mixpool2d_bwd_gpu_f32_i32(const float* __restrict__ gy, const float* __restrict__ a, int Na, int Ca, const float* __restrict__ omega, int K_omega, const float* __restrict__ g, const float* __restrict__ d, const int* __restrict__ arg,
                                                     int NC, int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw, float* __restrict__ gx) {
    mixpool2d_bwd(gy, a, Na, Ca, omega, K_omega, g, d, arg, NC, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, gx);
}
extern "C" __global__ void mixpool2d_bwd_gpu_f64_i32(const double* __restrict__ gy, const double* __restrict__ a, int Na, int Ca, const double* __restrict__ omega, int K_omega, const double* __restrict__ g, const double* __restrict__ d, const int* __restrict__ arg,
                                                     int NC, int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw, double* __restrict__ gx) {
    mixpool2d_bwd(gy, a, Na, Ca, omega, K_omega, g, d, arg, NC, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, gx);
}
extern "C" __global__ void gatedpool2d_gomega_gpu_f32(const float* __restrict__ gy, const float* __restrict__ x, const float* __restrict__ g, const float* __restrict__ d,
                                                      int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw, double* __restrict__ gom) {
    gatedpool2d_gomega(gy, x, g, d, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, gom);
}
extern "C" __global__ void gatedpool2d_gomega_gpu_f64(const double* __restrict__ gy, const double* __restrict__ x, const double* __restrict__ g, const double* __restrict__ d,
                                                      int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw, double* __restrict__ gom) {
    gatedpool2d_gomega(gy, x, g, d, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, gom);
}
