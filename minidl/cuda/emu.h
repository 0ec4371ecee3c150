// emu.h -- the CUDA built-ins for compiling kernels/*.cu with g++ (force-included: -include emu.h).
//
// minidl runs the SAME .cu files on the CPU to test them without a GPU (see docs/design.md,
// "CUDA kernels, and how they are tested without a GPU"). This header is the whole "CUDA" the kernel
// translation unit sees; the execution model lives in emu_runtime.cpp:
//
//   * every CUDA thread of a block is a fiber (its own small stack); one block runs at a time,
//     its threads in forward or reverse order, each until it reaches a barrier or returns;
//   * __syncthreads() is a real barrier: a thread that reaches it yields, and the block goes on
//     only when EVERY thread of the block waits at the same __syncthreads() (same line);
//     a thread that has returned while others wait, or two barriers at different lines, is a
//     divergent barrier and the launch fails with a message naming the threads and lines;
//   * warp shuffles (__shfl_*_sync) and __syncwarp() are barriers among the 32 lanes of a warp;
//   * static __shared__ variables are `thread_local` statics: all fibers of a block run on one OS
//     thread, so they share them, exactly as the threads of a block share shared memory;
//     `extern __shared__ T name[];` refers to a per-module buffer the loader defines (filled with
//     0xFF bytes before every block, so reading shared memory nobody wrote gives NaN / -1).
//
// Deliberately NO system header is included here: a kernel that uses what NVRTC does not
// provide (INFINITY, int64_t, std::, printf-less <cstdio>...) fails to compile under the
// emulation as it does under NVRTC. Only NVRTC's built-ins are declared below.
#ifndef MINIDL_EMU_H
#define MINIDL_EMU_H

typedef __SIZE_TYPE__ size_t;

// ---- execution-space and storage qualifiers ------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __constant__ const
// thread_local at block scope means static storage, one copy per OS thread: all fibers of the
// running block share it (CUDA shared memory), and `extern __shared__ T x[];` becomes a block-scope
// extern thread_local declaration resolved to the loader's dynamic shared memory buffer.
#define __shared__ thread_local

// ---- built-in variables ----------------------------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
extern "C" {
extern uint3 __emu_threadIdx;  // switched with the running fiber
extern uint3 __emu_blockIdx;
extern dim3 __emu_blockDim;
extern dim3 __emu_gridDim;
void __emu_syncthreads(const char* file, int line);
void __emu_syncwarp(unsigned mask, const char* file, int line);
void __emu_shfl(void* value, int nbytes, int mode, int arg, int width, unsigned mask,
                const char* file, int line);
void __emu_trap(const char* file, int line);
int printf(const char* fmt, ...);
}
#define threadIdx __emu_threadIdx
#define blockIdx __emu_blockIdx
#define blockDim __emu_blockDim
#define gridDim __emu_gridDim
#define warpSize 32

// ---- synchronisation -------------------------------------------------------------------------
#define __syncthreads() __emu_syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) __emu_syncwarp(__emu_mask_or_full(__VA_ARGS__), __FILE__, __LINE__)
inline unsigned __emu_mask_or_full(unsigned m = 0xffffffffu) { return m; }
#define __trap() __emu_trap(__FILE__, __LINE__)
inline void __threadfence() {}
inline void __threadfence_block() {}

// Shuffles: mode 0 = idx, 1 = up, 2 = down, 3 = xor (as in the PTX shfl instruction).
template <class T> inline T __emu_shfl_t(const char* f, int l, int mode, unsigned mask, T v,
                                         int arg, int width = 32) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  __emu_shfl(&v, (int)sizeof(T), mode, arg, width, mask, f, l);
  return v;
}
#define __shfl_sync(...) __emu_shfl_t(__FILE__, __LINE__, 0, __VA_ARGS__)
#define __shfl_up_sync(...) __emu_shfl_t(__FILE__, __LINE__, 1, __VA_ARGS__)
#define __shfl_down_sync(...) __emu_shfl_t(__FILE__, __LINE__, 2, __VA_ARGS__)
#define __shfl_xor_sync(...) __emu_shfl_t(__FILE__, __LINE__, 3, __VA_ARGS__)

// ---- atomics: fibers of one block are cooperative on one OS thread and blocks run one at a
// time, so a plain read-modify-write is atomic here. ---------------------------------------------
template <class T> inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <class T> inline T atomicSub(T* p, T v) { T old = *p; *p = old - v; return old; }
template <class T> inline T atomicExch(T* p, T v) { T old = *p; *p = v; return old; }
template <class T> inline T atomicMax(T* p, T v) { T old = *p; *p = old < v ? v : old; return old; }
template <class T> inline T atomicMin(T* p, T v) { T old = *p; *p = v < old ? v : old; return old; }
template <class T> inline T atomicCAS(T* p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }

// ---- math: the libm entry points NVRTC also has, declared here (no <math.h>) -----------------
extern "C" {
float expf(float) throw(); float exp2f(float) throw(); float expm1f(float) throw();
float logf(float) throw(); float log2f(float) throw(); float log1pf(float) throw();
float log10f(float) throw();
float powf(float, float) throw(); float sqrtf(float) throw(); float cbrtf(float) throw();
float fabsf(float) throw(); float fmaxf(float, float) throw(); float fminf(float, float) throw();
float floorf(float) throw(); float ceilf(float) throw(); float roundf(float) throw();
float truncf(float) throw(); float fmaf(float, float, float) throw(); float fmodf(float, float) throw();
float tanhf(float) throw(); float sinf(float) throw(); float cosf(float) throw();
float tanf(float) throw(); float erff(float) throw(); float atan2f(float, float) throw();
double exp(double) throw(); double log(double) throw(); double log1p(double) throw();
double expm1(double) throw();
double pow(double, double) throw(); double sqrt(double) throw(); double fabs(double) throw();
double fmax(double, double) throw(); double fmin(double, double) throw();
double floor(double) throw(); double ceil(double) throw(); double fma(double, double, double) throw();
double tanh(double) throw(); double sin(double) throw(); double cos(double) throw();
double erf(double) throw(); double fmod(double, double) throw(); double round(double) throw();
double trunc(double) throw(); double exp2(double) throw(); double log2(double) throw();
}
// CUDA's C++ float overloads of the plain names (device code may call exp(float)).
inline float exp(float x) { return expf(x); }
inline float log(float x) { return logf(x); }
inline float pow(float x, float y) { return powf(x, y); }
inline float sqrt(float x) { return sqrtf(x); }
inline float fabs(float x) { return fabsf(x); }
inline float fmax(float x, float y) { return fmaxf(x, y); }
inline float fmin(float x, float y) { return fminf(x, y); }
inline float tanh(float x) { return tanhf(x); }
inline float floor(float x) { return floorf(x); }
inline float ceil(float x) { return ceilf(x); }
// Fast intrinsics: exact libm here; the GPU's are approximate, so tests use tolerances.
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return (unsigned)(((unsigned long long)a * b) >> 32);
}
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fmaf_rn(float x, float y, float z) { return fmaf(x, y, z); }
inline double __fma_rn(double x, double y, double z) { return fma(x, y, z); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline int __float_as_int(float x) { int i; __builtin_memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; __builtin_memcpy(&x, &i, 4); return x; }
inline unsigned __float_as_uint(float x) { unsigned i; __builtin_memcpy(&i, &x, 4); return i; }
inline float __uint_as_float(unsigned i) { float x; __builtin_memcpy(&x, &i, 4); return x; }
inline long long __double_as_longlong(double x) { long long i; __builtin_memcpy(&i, &x, 8); return i; }
inline double __longlong_as_double(long long i) { double x; __builtin_memcpy(&x, &i, 8); return x; }
inline bool isnan(float x) { return __builtin_isnan(x); }
inline bool isnan(double x) { return __builtin_isnan(x); }
inline bool isinf(float x) { return __builtin_isinf(x); }
inline bool isinf(double x) { return __builtin_isinf(x); }
inline bool isfinite(float x) { return __builtin_isfinite(x); }
inline bool isfinite(double x) { return __builtin_isfinite(x); }
inline bool signbit(float x) { return __builtin_signbit(x); }
inline bool signbit(double x) { return __builtin_signbit(x); }
// CUDA's integer min/max overloads (float ones too).
#define MINIDL_EMU_MINMAX(T)                                  \
  inline T min(T a, T b) { return b < a ? b : a; }            \
  inline T max(T a, T b) { return a < b ? b : a; }
MINIDL_EMU_MINMAX(int)
MINIDL_EMU_MINMAX(unsigned)
MINIDL_EMU_MINMAX(long long)
MINIDL_EMU_MINMAX(unsigned long long)
#undef MINIDL_EMU_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline int abs(int a) { return a < 0 ? -a : a; }
template <class T> inline T __ldg(const T* p) { return *p; }

#endif  // MINIDL_EMU_H
