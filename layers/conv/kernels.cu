// The convolution lowering on the GPU: im2col and its adjoint col2im, in the column layout of
// layers/conv/cpu.py: cols (C*kh*kw, N*Ho*Wo), row (c*kh + i)*kw + j, column (n*Ho + oh)*Wo + ow,
//
//     cols[(c, i, j), (n, oh, ow)] = x[n, c, oh*sh + i - ph, ow*sw + j - pw]   (0 outside the input).
//
// im2col: one thread per column entry (a copy or a zero). col2im: one thread per input cell,
// gathering every column entry read from it: for kernel row i the output row is
// oh = (h + ph - i) / sh when that divides exactly and 0 <= oh < Ho (likewise for columns), so
// overlapping windows need no atomics and the sum is in a fixed order (deterministic).
#include "common.cuh"

template <class T>
__device__ void im2col(const T* __restrict__ x, int N, int C, int H, int W, int kh, int kw, int sh, int sw,
                       int ph, int pw, int Ho, int Wo, T* __restrict__ cols) {
    const long long ncols = (long long)N * Ho * Wo;
    MINIGNN_GRID_STRIDE(e, (long long)C * kh * kw * ncols) {
        const long long row = e / ncols, col = e % ncols;
        const int j = (int)(row % kw), i = (int)((row / kw) % kh), c = (int)(row / ((long long)kw * kh));
        const int ow = (int)(col % Wo), oh = (int)((col / Wo) % Ho), n = (int)(col / ((long long)Wo * Ho));
        const int h = oh * sh + i - ph, w = ow * sw + j - pw;
        cols[e] = (h >= 0 && h < H && w >= 0 && w < W) ? x[(((long long)n * C + c) * H + h) * W + w] : (T)0;
    }
}

template <class T>
__device__ void col2im(const T* __restrict__ cols, int N, int C, int H, int W, int kh, int kw, int sh, int sw,
                       int ph, int pw, int Ho, int Wo, T* __restrict__ gx) {
    const long long ncols = (long long)N * Ho * Wo;
    MINIGNN_GRID_STRIDE(e, (long long)N * C * H * W) {
        const int w = (int)(e % W), h = (int)((e / W) % H);
        const long long plane = e / ((long long)H * W);
        const int c = (int)(plane % C), n = (int)(plane / C);
        T s = (T)0;
        for (int i = 0; i < kh; ++i) {
            const int a = h + ph - i;                   // oh * sh
            if (a < 0 || a % sh != 0 || a / sh >= Ho) continue;
            const int oh = a / sh;
            for (int j = 0; j < kw; ++j) {
                const int b = w + pw - j;               // ow * sw
                if (b < 0 || b % sw != 0 || b / sw >= Wo) continue;
                const long long row = ((long long)c * kh + i) * kw + j;
                s += cols[row * ncols + ((long long)n * Ho + oh) * Wo + b / sw];
            }
        }
        gx[e] = s;
    }
}

// The entry points, one per dtype. Arguments: the input array, then (N, C, H, W, kh, kw, sh, sw,
// ph, pw, Ho, Wo) as int32, then the output array.
extern "C" __global__ void im2col_gpu_f32(const float* __restrict__ x, int N, int C, int H, int W, int kh, int kw,
                                       int sh, int sw, int ph, int pw, int Ho, int Wo, float* __restrict__ cols) {
    im2col(x, N, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, cols);
}
extern "C" __global__ void col2im_gpu_f32(const float* __restrict__ cols, int N, int C, int H, int W, int kh, int kw,
                                       int sh, int sw, int ph, int pw, int Ho, int Wo, float* __restrict__ gx) {
    col2im(cols, N, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, gx);
}
extern "C" __global__ void im2col_gpu_f64(const double* __restrict__ x, int N, int C, int H, int W, int kh, int kw,
                                       int sh, int sw, int ph, int pw, int Ho, int Wo, double* __restrict__ cols) {
    im2col(x, N, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, cols);
}
extern "C" __global__ void col2im_gpu_f64(const double* __restrict__ cols, int N, int C, int H, int W, int kh, int kw,
                                       int sh, int sw, int ph, int pw, int Ho, int Wo, double* __restrict__ gx) {
    col2im(cols, N, C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, gx);
}
