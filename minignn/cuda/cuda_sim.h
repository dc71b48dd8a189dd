// The CUDA built-ins for the gpu-sim device: with this header (passed to the C++ compiler with
// -include), a kernels.cu file compiles unchanged as plain C++, and minignn's launcher runs its
// kernels on the CPU by looping over every block and thread of the grid (minignn/cuda/sim.py).
//
// Only what minignn's kernel style allows is defined: thread and block indices, the function
// qualifiers, and the math functions. __shared__, __syncthreads, atomics and warp intrinsics are
// deliberately missing, so a kernel that uses one fails to build here (each thread must write
// only its own outputs, which is what makes the simulation exact).
#pragma once
#include <cmath>
#include <math.h>      // expf, fmaxf, sqrtf, ...: the float functions CUDA C also has
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <string>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict

struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// one simulated thread at a time per host thread
static thread_local dim3 threadIdx(0, 0, 0);
static thread_local dim3 blockIdx(0, 0, 0);
static thread_local dim3 blockDim(1, 1, 1);
static thread_local dim3 gridDim(1, 1, 1);

// math: CUDA's overloaded device functions are the C++ library's
using std::exp; using std::log; using std::sqrt; using std::fabs; using std::fmax; using std::fmin;
using std::isnan; using std::isinf; using std::isfinite; using std::floor; using std::ceil;
using std::tanh; using std::log1p; using std::expm1; using std::pow;
inline float __expf(float v) { return std::exp(v); }
inline float __logf(float v) { return std::log(v); }
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
inline double rsqrt(double v) { return 1.0 / std::sqrt(v); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, 4); return f; }
inline int __float_as_int(float v) { int i; std::memcpy(&i, &v, 4); return i; }
inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, 8); return d; }
inline long long __double_as_longlong(double v) { long long i; std::memcpy(&i, &v, 8); return i; }
