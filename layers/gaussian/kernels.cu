// Gaussian-based pooling on the GPU (NCHW): the CUDA mirror of layers/gaussian/cpu.py, for any
// window geometry and one eta per window (eta is (N, C, Ho, Wo); the layer broadcasts its forms).
//
//   forward   gausspool2d_fwd_gpu_*     one thread per output window: mu, sigma (double) and
//                                       y = mu + eta sigma
//   backward  gausspool2d_bwd_gx_gpu_*  one thread per input cell: the sum over the windows that
//                                       hold it (minignn_windows_of) of
//                                       gy (1/K + slope (x - mu)), slope = eta / (K sigma)
//                                       (0 for a flat window, sigma <= sigma_min); geta = gy sigma
//                                       is one elementwise xp product in the glue
//
// Every thread writes only its own outputs (no atomics): results are deterministic.
//
// The window arithmetic, all in double whatever T (see cpu.py's docstring): K = the real cells,
// mu = 1/K sum x, v = 1/K sum (x - mu)^2 (two passes), sigma = max(sqrt(v), sigma_min) with
// sigma_min = sqrt(EPS) passed in by the glue (a NaN v stays NaN), y = mu + eta sigma.
#include "common.cuh"
#include "_window.cuh"

// sigma = max(sqrt(v), sigma_min); NaN for a NaN v (the comparison is false).
__device__ __forceinline__ double gausspool_floor_sigma(double v, double sigma_min) {
    const double s = sqrt(v);
    return s < sigma_min ? sigma_min : s;
}

template <class T>
__device__ void gausspool2d_fwd(const T* __restrict__ x, const T* __restrict__ eta, int NC, int H, int W, int Ho,
                                int Wo, int kh, int kw, int sh, int sw, int ph, int pw, double sigma_min,
                                T* __restrict__ y, double* __restrict__ mu, double* __restrict__ sigma) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * Ho * Wo) {
        const int ow = (int)(i % Wo), oh = (int)((i / Wo) % Ho);
        const long long plane = i / ((long long)Ho * Wo);
        const T* xp = x + plane * H * W;
        const int top = oh * sh - ph, left = ow * sw - pw;
        int r0, r1, c0, c1;
        minignn_real_offsets(top, kh, H, &r0, &r1);
        minignn_real_offsets(left, kw, W, &c0, &c1);
        const double cnt = (double)((r1 - r0) * (c1 - c0));
        double s = 0.0;
        for (int di = r0; di < r1; ++di)
            for (int dj = c0; dj < c1; ++dj) s += (double)xp[(top + di) * W + left + dj];
        const double m = s / cnt;
        double q = 0.0;
        for (int di = r0; di < r1; ++di)
            for (int dj = c0; dj < c1; ++dj) {
                const double d = (double)xp[(top + di) * W + left + dj] - m;
                q += d * d;
            }
        const double sg = gausspool_floor_sigma(q / cnt, sigma_min);
        mu[i] = m;
        sigma[i] = sg;
        y[i] = (T)(m + (double)eta[i] * sg);
    }
}

template <class T>
__device__ void gausspool2d_bwd_gx(const T* __restrict__ x, const T* __restrict__ eta, const T* __restrict__ gy,
                                   const double* __restrict__ mu, const double* __restrict__ sigma, int NC, int H,
                                   int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                   double sigma_min, T* __restrict__ gx) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * H * W) {
        const int w = (int)(i % W), h = (int)((i / W) % H);
        const long long plane = i / ((long long)H * W);
        const double v = (double)x[i];
        int oh0, oh1, ow0, ow1;
        minignn_windows_of(h, kh, sh, ph, Ho, &oh0, &oh1);
        minignn_windows_of(w, kw, sw, pw, Wo, &ow0, &ow1);
        double s = 0.0;
        for (int oh = oh0; oh < oh1; ++oh) {
            int r0, r1;
            minignn_real_offsets(oh * sh - ph, kh, H, &r0, &r1);
            for (int ow = ow0; ow < ow1; ++ow) {
                int c0, c1;
                minignn_real_offsets(ow * sw - pw, kw, W, &c0, &c1);
                const double cnt = (double)((r1 - r0) * (c1 - c0));
                const long long o = (plane * Ho + oh) * Wo + ow;
                const double g = (double)gy[o], sg = sigma[o];
                const double slope = sg <= sigma_min ? 0.0 : (double)eta[o] / (cnt * sg);
                s += g / cnt + g * slope * (v - mu[o]);
            }
        }
        gx[i] = (T)s;
    }
}

// The entry points: one per dtype. Arguments: the arrays, then (N*C, H, W, Ho, Wo, kh, kw, sh, sw,
// ph, pw) as int32 and sigma_min as double, then the outputs; mu and sigma are double for both.
extern "C" __global__ void gausspool2d_fwd_gpu_f32(const float* __restrict__ x, const float* __restrict__ eta, int NC,
                                                   int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw,
                                                   int ph, int pw, double sigma_min, float* __restrict__ y,
                                                   double* __restrict__ mu, double* __restrict__ sigma) {
    gausspool2d_fwd(x, eta, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, sigma_min, y, mu, sigma);
}
extern "C" __global__ void gausspool2d_fwd_gpu_f64(const double* __restrict__ x, const double* __restrict__ eta,
                                                   int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh,
                                                   int sw, int ph, int pw, double sigma_min, double* __restrict__ y,
                                                   double* __restrict__ mu, double* __restrict__ sigma) {
    gausspool2d_fwd(x, eta, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, sigma_min, y, mu, sigma);
}
extern "C" __global__ void gausspool2d_bwd_gx_gpu_f32(const float* __restrict__ x, const float* __restrict__ eta,
                                                      const float* __restrict__ gy, const double* __restrict__ mu,
                                                      const double* __restrict__ sigma, int NC, int H, int W, int Ho,
                                                      int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                      double sigma_min, float* __restrict__ gx) {
    gausspool2d_bwd_gx(x, eta, gy, mu, sigma, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, sigma_min, gx);
}
extern "C" __global__ void gausspool2d_bwd_gx_gpu_f64(const double* __restrict__ x, const double* __restrict__ eta,
                                                      const double* __restrict__ gy, const double* __restrict__ mu,
                                                      const double* __restrict__ sigma, int NC, int H, int W, int Ho,
                                                      int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                                      double sigma_min, double* __restrict__ gx) {
    gausspool2d_bwd_gx(x, eta, gy, mu, sigma, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, sigma_min, gx);
}
