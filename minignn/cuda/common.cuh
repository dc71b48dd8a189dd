// Shared by every kernels.cu of minignn (on the GPU, and on the CPU through gpu-sim):
// the grid-stride loop and the infinities, written with nothing but CUDA built-ins so that NVRTC,
// nvcc and the C++ compiler of gpu-sim all accept it.
#pragma once

// for (i over [0, n)) split across the whole grid: each thread takes i, i + stride, ...
#define MINIGNN_GRID_STRIDE(i, n)                                                              \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n); \
         i += (long long)blockDim.x * gridDim.x)

template <class T> __device__ __forceinline__ T minignn_inf();
template <> __device__ __forceinline__ float minignn_inf<float>() { return __int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double minignn_inf<double>() {
    return __longlong_as_double(0x7ff0000000000000LL);
}
template <class T> __device__ __forceinline__ T minignn_nan();
template <> __device__ __forceinline__ float minignn_nan<float>() { return __int_as_float(0x7fc00000); }
template <> __device__ __forceinline__ double minignn_nan<double>() {
    return __longlong_as_double(0x7ff8000000000000LL);
}
