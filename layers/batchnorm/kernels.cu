// Batch normalisation on the GPU (NCHW seen as (N, C, L), L = H*W), in the conventions of
// layers/batchnorm/cpu.py: per-channel statistics in double, a two-pass variance (the mean, then
// squared deviations from it), and the elementwise passes computed in double and rounded once.
//
// Per-channel sums are gathered in two steps without atomics: one thread per row (n, c) sums its
// L values into partial[n, c], and the glue sums the partials over n with an xp reduction (float64).
// The elementwise passes take one thread per cell.
#include "common.cuh"

// partial[n*C + c] = sum_i (x[n, c, i] - shift[c]) ** power, power 1 or 2, in double.
template <class T>
__device__ void bn_row_sums(const T* __restrict__ x, const double* __restrict__ shift, int N, int C, int L,
                            int power, double* __restrict__ partial) {
    MINIGNN_GRID_STRIDE(r, (long long)N * C) {
        const T* row = x + r * L;
        const double m = shift[r % C];
        double s = 0.0;
        if (power == 1) {
            for (int i = 0; i < L; ++i) s += (double)row[i] - m;
        } else {
            for (int i = 0; i < L; ++i) {
                const double d = (double)row[i] - m;
                s += d * d;
            }
        }
        partial[r] = s;
    }
}

// pg[n*C + c] = sum_i gy[n, c, i],  pgx[n*C + c] = sum_i gy[n, c, i] * (x[n, c, i] - mean[c]).
template <class T>
__device__ void bn_grad_sums(const T* __restrict__ gy, const T* __restrict__ x, const double* __restrict__ mean,
                             int N, int C, int L, double* __restrict__ pg, double* __restrict__ pgx) {
    MINIGNN_GRID_STRIDE(r, (long long)N * C) {
        const T* g = gy + r * L;
        const T* xr = x + r * L;
        const double m = mean[r % C];
        double s = 0.0, q = 0.0;
        for (int i = 0; i < L; ++i) {
            s += (double)g[i];
            q += (double)g[i] * ((double)xr[i] - m);
        }
        pg[r] = s;
        pgx[r] = q;
    }
}

// out[n, c, i] = a[c] * u[n, c, i] + b[c] * (x[n, c, i] - m[c]) + k[c], in double. The forward is
// a = 0, b = invstd * gamma, k = beta; the backward's input gradient is u = gy and its a, b, k.
template <class T>
__device__ void bn_affine(const T* __restrict__ u, const T* __restrict__ x, const double* __restrict__ m,
                          const double* __restrict__ a, const double* __restrict__ b, const double* __restrict__ k,
                          int N, int C, int L, T* __restrict__ out) {
    MINIGNN_GRID_STRIDE(e, (long long)N * C * L) {
        const int c = (int)((e / L) % C);
        out[e] = (T)(a[c] * (double)u[e] + b[c] * ((double)x[e] - m[c]) + k[c]);
    }
}

// The entry points, one per dtype. Arrays first, then (N, C, L[, power]) as int32, then outputs.
extern "C" __global__ void batchnorm2d_row_sums_gpu_f32(const float* __restrict__ x, const double* __restrict__ shift,
                                                        int N, int C, int L, int power, double* __restrict__ partial) {
    bn_row_sums(x, shift, N, C, L, power, partial);
}
extern "C" __global__ void batchnorm2d_row_sums_gpu_f64(const double* __restrict__ x, const double* __restrict__ shift,
                                                        int N, int C, int L, int power, double* __restrict__ partial) {
    bn_row_sums(x, shift, N, C, L, power, partial);
}
extern "C" __global__ void batchnorm2d_grad_sums_gpu_f32(const float* __restrict__ gy, const float* __restrict__ x,
                                                         const double* __restrict__ mean, int N, int C, int L,
                                                         double* __restrict__ pg, double* __restrict__ pgx) {
    bn_grad_sums(gy, x, mean, N, C, L, pg, pgx);
}
extern "C" __global__ void batchnorm2d_grad_sums_gpu_f64(const double* __restrict__ gy, const double* __restrict__ x,
                                                         const double* __restrict__ mean, int N, int C, int L,
                                                         double* __restrict__ pg, double* __restrict__ pgx) {
    bn_grad_sums(gy, x, mean, N, C, L, pg, pgx);
}
extern "C" __global__ void batchnorm2d_affine_gpu_f32(const float* __restrict__ u, const float* __restrict__ x,
                                                      const double* __restrict__ m, const double* __restrict__ a,
                                                      const double* __restrict__ b, const double* __restrict__ k,
                                                      int N, int C, int L, float* __restrict__ out) {
    bn_affine(u, x, m, a, b, k, N, C, L, out);
}
extern "C" __global__ void batchnorm2d_affine_gpu_f64(const double* __restrict__ u, const double* __restrict__ x,
                                                      const double* __restrict__ m, const double* __restrict__ a,
                                                      const double* __restrict__ b, const double* __restrict__ k,
                                                      int N, int C, int L, double* __restrict__ out) {
    bn_affine(u, x, m, a, b, k, N, C, L, out);
}
