// Max and average pooling on the GPU (NCHW), one thread per output cell in the forward passes
// and one thread per input cell in the backward passes: each thread gathers what it needs and
// writes only its own cell, so overlapping windows need no atomics and every result is
// deterministic. The math is that of layers/pooling/__init__.py; geometry from _window.cuh.
#include "common.cuh"
#include "_window.cuh"

// y[n, c, oh, ow] = max over the window's real cells, arg = offset di*kw + dj of the first max
// (the first NaN wins and propagates).
template <class T, class A>
__device__ void maxpool2d_fwd(const T* __restrict__ x, int NC, int H, int W, int Ho, int Wo, int kh, int kw,
                              int sh, int sw, int ph, int pw, T* __restrict__ y, A* __restrict__ arg) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * Ho * Wo) {
        const int ow = (int)(i % Wo), oh = (int)((i / Wo) % Ho);
        const long long plane = i / ((long long)Ho * Wo);
        const T* xp = x + plane * H * W;
        int r0, r1, c0, c1;
        minignn_real_offsets(oh * sh - ph, kh, H, &r0, &r1);
        minignn_real_offsets(ow * sw - pw, kw, W, &c0, &c1);
        T best = xp[(oh * sh - ph + r0) * W + ow * sw - pw + c0];
        int bi = r0 * kw + c0;
        for (int di = r0; di < r1; ++di)
            for (int dj = c0; dj < c1; ++dj) {
                const T v = xp[(oh * sh - ph + di) * W + ow * sw - pw + dj];
                if (minignn_takes_over(v, best)) { best = v; bi = di * kw + dj; }
            }
        y[i] = best;
        arg[i] = (A)bi;
    }
}

// gx[n, c, h, w] = sum of gy over the windows whose argmax is this cell.
template <class T, class A>
__device__ void maxpool2d_bwd(const T* __restrict__ gy, const A* __restrict__ arg, int NC, int H, int W, int Ho,
                              int Wo, int kh, int kw, int sh, int sw, int ph, int pw, T* __restrict__ gx) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * H * W) {
        const int w = (int)(i % W), h = (int)((i / W) % H);
        const long long plane = i / ((long long)H * W);
        int oh0, oh1, ow0, ow1;
        minignn_windows_of(h, kh, sh, ph, Ho, &oh0, &oh1);
        minignn_windows_of(w, kw, sw, pw, Wo, &ow0, &ow1);
        double s = 0.0;
        for (int oh = oh0; oh < oh1; ++oh)
            for (int ow = ow0; ow < ow1; ++ow) {
                const long long o = (plane * Ho + oh) * Wo + ow;
                if ((int)arg[o] == (h - (oh * sh - ph)) * kw + (w - (ow * sw - pw))) s += (double)gy[o];
            }
        gx[i] = (T)s;
    }
}

// y = mean over the window's real cells (padding not counted), summed in double.
template <class T>
__device__ void avgpool2d_fwd(const T* __restrict__ x, int NC, int H, int W, int Ho, int Wo, int kh, int kw,
                              int sh, int sw, int ph, int pw, T* __restrict__ y) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * Ho * Wo) {
        const int ow = (int)(i % Wo), oh = (int)((i / Wo) % Ho);
        const T* xp = x + (i / ((long long)Ho * Wo)) * H * W;
        int r0, r1, c0, c1;
        minignn_real_offsets(oh * sh - ph, kh, H, &r0, &r1);
        minignn_real_offsets(ow * sw - pw, kw, W, &c0, &c1);
        double s = 0.0;
        for (int di = r0; di < r1; ++di)
            for (int dj = c0; dj < c1; ++dj) s += (double)xp[(oh * sh - ph + di) * W + ow * sw - pw + dj];
        y[i] = (T)(s / ((r1 - r0) * (c1 - c0)));
    }
}

// gx[n, c, h, w] = sum over the windows holding the cell of gy / (that window's real cells).
template <class T>
__device__ void avgpool2d_bwd(const T* __restrict__ gy, int NC, int H, int W, int Ho, int Wo, int kh, int kw,
                              int sh, int sw, int ph, int pw, T* __restrict__ gx) {
    MINIGNN_GRID_STRIDE(i, (long long)NC * H * W) {
        const int w = (int)(i % W), h = (int)((i / W) % H);
        const long long plane = i / ((long long)H * W);
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
                s += (double)gy[(plane * Ho + oh) * Wo + ow] / ((r1 - r0) * (c1 - c0));
            }
        }
        gx[i] = (T)s;
    }
}

// The entry points: one per dtype (and argmax type, int8 or int32 for windows of more than 127
// cells). Arguments: the arrays, then (N*C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw) as int32.
extern "C" __global__ void maxpool2d_fwd_gpu_f32(const float* __restrict__ x, int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                              float* __restrict__ y, signed char* __restrict__ arg) {
    maxpool2d_fwd(x, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y, arg);
}
extern "C" __global__ void maxpool2d_bwd_gpu_f32(const float* __restrict__ gy, const signed char* __restrict__ arg,
                                              int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw, float* __restrict__ gx) {
    maxpool2d_bwd(gy, arg, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, gx);
}
extern "C" __global__ void maxpool2d_fwd_gpu_f64(const double* __restrict__ x, int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                              double* __restrict__ y, signed char* __restrict__ arg) {
    maxpool2d_fwd(x, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y, arg);
}
extern "C" __global__ void maxpool2d_bwd_gpu_f64(const double* __restrict__ gy, const signed char* __restrict__ arg,
                                              int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw, double* __restrict__ gx) {
    maxpool2d_bwd(gy, arg, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, gx);
}
extern "C" __global__ void maxpool2d_fwd_gpu_f32_i32(const float* __restrict__ x, int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                              float* __restrict__ y, int* __restrict__ arg) {
    maxpool2d_fwd(x, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y, arg);
}
extern "C" __global__ void maxpool2d_bwd_gpu_f32_i32(const float* __restrict__ gy, const int* __restrict__ arg,
                                              int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw, float* __restrict__ gx) {
    maxpool2d_bwd(gy, arg, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, gx);
}
extern "C" __global__ void maxpool2d_fwd_gpu_f64_i32(const double* __restrict__ x, int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw,
                                              double* __restrict__ y, int* __restrict__ arg) {
    maxpool2d_fwd(x, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y, arg);
}
extern "C" __global__ void maxpool2d_bwd_gpu_f64_i32(const double* __restrict__ gy, const int* __restrict__ arg,
                                              int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw, double* __restrict__ gx) {
    maxpool2d_bwd(gy, arg, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, gx);
}
extern "C" __global__ void avgpool2d_fwd_gpu_f32(const float* __restrict__ x, int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw, float* __restrict__ y) {
    avgpool2d_fwd(x, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y);
}
extern "C" __global__ void avgpool2d_bwd_gpu_f32(const float* __restrict__ gy, int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw, float* __restrict__ gx) {
    avgpool2d_bwd(gy, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, gx);
}
extern "C" __global__ void avgpool2d_fwd_gpu_f64(const double* __restrict__ x, int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw, double* __restrict__ y) {
    avgpool2d_fwd(x, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y);
}
extern "C" __global__ void avgpool2d_bwd_gpu_f64(const double* __restrict__ gy, int NC, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph, int pw, double* __restrict__ gx) {
    avgpool2d_bwd(gy, NC, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, gx);
}
