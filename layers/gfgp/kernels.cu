// The global statistics of GFGP on the GPU, in the conventions of layers/gfgp/cpu.py: x seen as
// (P, HW) planes (P = N*C); the forward passes take one thread per plane (sums in double, results
// rounded to the input's dtype), the backward passes one thread per cell, each writing (or, with
// accumulate = 1, adding into) only its own gx cell.
#include "common.cuh"

// avg[p] = mean(x[p, :]).
template <class T>
__device__ void global_avg_fwd(const T* __restrict__ x, int P, int HW, T* __restrict__ avg) {
    MINIGNN_GRID_STRIDE(p, P) {
        const T* row = x + p * HW;
        double s = 0.0;
        for (int i = 0; i < HW; ++i) s += (double)row[i];
        avg[p] = (T)(s / HW);
    }
}

// avg[p] = mean(x[p]), std[p] = sqrt(mean((x[p] - avg[p])**2) + eps): two passes, the second
// about the unrounded mean.
template <class T>
__device__ void global_avgstd_fwd(const T* __restrict__ x, int P, int HW, double eps, T* __restrict__ avg,
                                  T* __restrict__ std_) {
    MINIGNN_GRID_STRIDE(p, P) {
        const T* row = x + p * HW;
        double s = 0.0;
        for (int i = 0; i < HW; ++i) s += (double)row[i];
        const double mu = s / HW;
        double q = 0.0;
        for (int i = 0; i < HW; ++i) {
            const double d = (double)row[i] - mu;
            q += d * d;
        }
        avg[p] = (T)mu;
        std_[p] = (T)sqrt(q / HW + eps);
    }
}

// mx[p] = max(x[p]), arg[p] = its first (row-major) index; the first NaN wins.
template <class T>
__device__ void global_max_fwd(const T* __restrict__ x, int P, int HW, T* __restrict__ mx,
                               long long* __restrict__ arg) {
    MINIGNN_GRID_STRIDE(p, P) {
        const T* row = x + p * HW;
        T best = row[0];
        int k = 0;
        if (best == best) {
            for (int i = 1; i < HW; ++i) {
                const T v = row[i];
                if (v > best) { best = v; k = i; }
                else if (v != v) { best = v; k = i; break; }
            }
        }
        mx[p] = best;
        arg[p] = k;
    }
}

// gx[p, i] (+)= g[p] / HW.
template <class T>
__device__ void global_avg_bwd(const T* __restrict__ g, int P, int HW, int accumulate, T* __restrict__ gx) {
    MINIGNN_GRID_STRIDE(e, (long long)P * HW) {
        const double v = (double)g[e / HW] / HW;
        gx[e] = (T)(accumulate ? (double)gx[e] + v : v);
    }
}

// gx[p, i] (+)= g_avg[p] / HW + g_std[p] * (x[p, i] - avg[p]) / (HW * std[p]).
template <class T>
__device__ void global_avgstd_bwd(const T* __restrict__ x, const T* __restrict__ g_avg, const T* __restrict__ g_std,
                                  const T* __restrict__ avg, const T* __restrict__ std_, int P, int HW, int accumulate,
                                  T* __restrict__ gx) {
    MINIGNN_GRID_STRIDE(e, (long long)P * HW) {
        const long long p = e / HW;
        const double a = (double)g_avg[p] / HW, b = (double)g_std[p] / ((double)HW * (double)std_[p]);
        const double v = a + b * (double)(x[e] - avg[p]);
        gx[e] = (T)(accumulate ? (double)gx[e] + v : v);
    }
}

// gx[p, arg[p]] (+)= g[p], zero elsewhere (unless accumulating).
template <class T>
__device__ void global_max_bwd(const T* __restrict__ g, const long long* __restrict__ arg, int P, int HW,
                               int accumulate, T* __restrict__ gx) {
    MINIGNN_GRID_STRIDE(e, (long long)P * HW) {
        const long long p = e / HW;
        const T base = accumulate ? gx[e] : (T)0;
        gx[e] = (e % HW == arg[p]) ? (T)(base + g[p]) : base;
    }
}

// The entry points, one per dtype: arrays, then (P, HW[, eps or accumulate]), then outputs.
extern "C" __global__ void gfgp_global_avg_fwd_gpu_f32(const float* __restrict__ x, int P, int HW, float* __restrict__ avg) {
    global_avg_fwd(x, P, HW, avg);
}
extern "C" __global__ void gfgp_global_avgstd_fwd_gpu_f32(const float* __restrict__ x, int P, int HW, double eps,
                                                      float* __restrict__ avg, float* __restrict__ std_) {
    global_avgstd_fwd(x, P, HW, eps, avg, std_);
}
extern "C" __global__ void gfgp_global_max_fwd_gpu_f32(const float* __restrict__ x, int P, int HW, float* __restrict__ mx,
                                                   long long* __restrict__ arg) {
    global_max_fwd(x, P, HW, mx, arg);
}
extern "C" __global__ void gfgp_global_avg_bwd_gpu_f32(const float* __restrict__ g, int P, int HW, int accumulate,
                                                   float* __restrict__ gx) {
    global_avg_bwd(g, P, HW, accumulate, gx);
}
extern "C" __global__ void gfgp_global_avgstd_bwd_gpu_f32(const float* __restrict__ x, const float* __restrict__ g_avg,
                                                      const float* __restrict__ g_std, const float* __restrict__ avg,
                                                      const float* __restrict__ std_, int P, int HW, int accumulate,
                                                      float* __restrict__ gx) {
    global_avgstd_bwd(x, g_avg, g_std, avg, std_, P, HW, accumulate, gx);
}
extern "C" __global__ void gfgp_global_max_bwd_gpu_f32(const float* __restrict__ g, const long long* __restrict__ arg,
                                                   int P, int HW, int accumulate, float* __restrict__ gx) {
    global_max_bwd(g, arg, P, HW, accumulate, gx);
}
extern "C" __global__ void gfgp_global_avg_fwd_gpu_f64(const double* __restrict__ x, int P, int HW, double* __restrict__ avg) {
    global_avg_fwd(x, P, HW, avg);
}
extern "C" __global__ void gfgp_global_avgstd_fwd_gpu_f64(const double* __restrict__ x, int P, int HW, double eps,
                                                      double* __restrict__ avg, double* __restrict__ std_) {
    global_avgstd_fwd(x, P, HW, eps, avg, std_);
}
extern "C" __global__ void gfgp_global_max_fwd_gpu_f64(const double* __restrict__ x, int P, int HW, double* __restrict__ mx,
                                                   long long* __restrict__ arg) {
    global_max_fwd(x, P, HW, mx, arg);
}
extern "C" __global__ void gfgp_global_avg_bwd_gpu_f64(const double* __restrict__ g, int P, int HW, int accumulate,
                                                   double* __restrict__ gx) {
    global_avg_bwd(g, P, HW, accumulate, gx);
}
extern "C" __global__ void gfgp_global_avgstd_bwd_gpu_f64(const double* __restrict__ x, const double* __restrict__ g_avg,
                                                      const double* __restrict__ g_std, const double* __restrict__ avg,
                                                      const double* __restrict__ std_, int P, int HW, int accumulate,
                                                      double* __restrict__ gx) {
    global_avgstd_bwd(x, g_avg, g_std, avg, std_, P, HW, accumulate, gx);
}
extern "C" __global__ void gfgp_global_max_bwd_gpu_f64(const double* __restrict__ g, const long long* __restrict__ arg,
                                                   int P, int HW, int accumulate, double* __restrict__ gx) {
    global_max_bwd(g, arg, P, HW, accumulate, gx);
}
