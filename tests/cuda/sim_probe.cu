// Kernels for tests/test_cuda.py: what the gpu-sim launcher must get right.
#include "common.cuh"

// out[i] = i-th thread's (blockIdx, threadIdx) spelled as one number: checks the index built-ins
extern "C" __global__ void where_am_i(long long* __restrict__ out, int n) {
    const long long b = blockIdx.x + (long long)gridDim.x * (blockIdx.y + (long long)gridDim.y * blockIdx.z);
    const long long t = threadIdx.x + (long long)blockDim.x * (threadIdx.y + (long long)blockDim.y * threadIdx.z);
    const long long i = b * blockDim.x * blockDim.y * blockDim.z + t;
    if (i < n) out[i] = 1000000 * b + t;
}

// y = a * x + b over a grid-stride loop: one output per thread, order-independent
extern "C" __global__ void axpb_f32(const float* __restrict__ x, float a, double b, long long n,
                                     float* __restrict__ y) {
    MINIGNN_GRID_STRIDE(i, n) { y[i] = a * x[i] + (float)b; }
}

// a race: every thread writes the same cell, so the last thread to run wins
extern "C" __global__ void last_writer_wins(int* __restrict__ out) {
    out[0] = (int)(blockIdx.x * blockDim.x + threadIdx.x);
}

// a race through reading another thread's output: y[i] = y[i - 1] + 1
extern "C" __global__ void reads_a_neighbour(int* __restrict__ y, int n) {
    MINIGNN_GRID_STRIDE(i, n) { y[i] = i > 0 ? y[i - 1] + 1 : 0; }
}
