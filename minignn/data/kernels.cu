// The training batch on the GPU: gather + zero-padded random crop + horizontal flip +
// normalisation, from the uint8 training set that stays on the device for the whole run (the
// CUDA twin of augment_normalize_cpu in loader.py). One thread per output value:
//   out[b, c, i, j] = scale[c] * pix + shift[c],  pix = x[idx[b], c, i + dy[b] - pad, j' + dx[b] - pad]
// (0 outside the image), j' = W - 1 - j when flip[b], else j.
#include "common.cuh"

extern "C" __global__ void augment_normalize_gpu(const unsigned char* __restrict__ x, const long long* __restrict__ idx,
                                                 const long long* __restrict__ dy, const long long* __restrict__ dx,
                                                 const unsigned char* __restrict__ flip, int B, int C, int H, int W,
                                                 int pad, const float* __restrict__ scale,
                                                 const float* __restrict__ shift, float* __restrict__ out) {
    MINIGNN_GRID_STRIDE(o, (long long)B * C * H * W) {
        const int j = (int)(o % W), i = (int)((o / W) % H), c = (int)((o / ((long long)W * H)) % C);
        const long long b = o / ((long long)W * H * C);
        const int si = i + (int)dy[b] - pad;
        const int jj = flip[b] ? W - 1 - j : j;
        const int sj = jj + (int)dx[b] - pad;
        float pix = 0.0f;
        if (si >= 0 && si < H && sj >= 0 && sj < W) pix = (float)x[((idx[b] * C + c) * H + si) * W + sj];
        out[o] = pix * scale[c] + shift[c];
    }
}
