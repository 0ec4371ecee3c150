// lrn.cu -- local response normalization across channels (AlexNet, Krizhevsky et al. 2012, 3.3).
//
// For activity a (N, C, H, W) at channel i of one pixel, with n = size:
//
//   s_i = k + alpha * sum_{j = max(0, i - n/2)}^{min(C - 1, i + (n - 1)/2)} a_j^2     ("scale")
//   b_i = a_i * s_i^(-beta)
//
// The paper's form: alpha multiplies the plain sum (Caffe, cuDNN and PyTorch divide it by n;
// paper (alpha, k=2) == PyTorch (alpha*n, k=2)). The window is n channels,
// [i - n/2, i + (n-1)/2] clipped (PyTorch's; symmetric for odd n), so for an even n it reaches
// one channel further down than up.
//
// Gradient. b_i depends on a_i directly and, through s_j, on every a_i inside window(j):
//
//   dL/da_i = g_i * s_i^(-beta) - 2 * alpha * beta * a_i * sum_{j : i in window(j)} r_j,
//   r_j = g_j * b_j / s_j = g_j * a_j * s_j^(-beta - 1)
//
// (using d s_j / d a_i = 2 alpha a_i and d b_j / d s_j = -beta b_j / s_j). i is in window(j)
// iff j - n/2 <= i <= j + (n-1)/2, i.e. j in [i - (n-1)/2, i + n/2]: the mirror image of the
// forward window (the same set only for odd n). The backward reads a, s and g (not b: r_j is
// formed from a_j and s_j), three arrays in and one out.
//
// Parallelism: one thread per (n, channel chunk, pixel). A chunk is `chunk` consecutive
// channels [c0, c1); its thread first reads the window's halo below c0 (n - 1 channels at most,
// which the neighbouring chunk also reads: mostly L2 hits), then walks c0..c1-1. Any C then
// gives N * ceil(C / chunk) * H*W threads (the launcher picks chunk so that fills the GPU).
// Consecutive threads are consecutive pixels: every load and store is coalesced.
//
// The window lives in registers (templates on n = 3 and 5, AlexNet's; other n take a generic
// path that re-reads the window from memory, L1-cached): a ring of n slots whose slot of
// channel j is (j - c0 + const) mod n. The channel loop is unrolled by n from c0, so every slot
// index is a compile-time constant (no local memory). Each channel is loaded, squared (forward)
// or turned into r_j (backward) ONCE, when it enters the window; the window's sum is re-added
// from the ring in channel order at every step (n - 1 additions, free in a memory-bound kernel),
// which is also exactly the order of the generic path and of a naive sum: no running sum, so no
// drift when a large value leaves the window.
//
// s^(-beta) = exp2(-beta * log2(s)) since s >= k > 0 (full-accuracy exp2/log2: a few
// instructions instead of pow's special-case handling); the backward forms s^(-beta) and
// s^(-beta-1) from one log2 and two exp2 -- no division anywhere. On the GPU the compiler may
// contract `k + alpha * sum` into an FMA, so GPU results match the emulator to an ulp or so,
// not bit for bit.

__device__ __forceinline__ float log2r(float v) { return log2f(v); }
__device__ __forceinline__ double log2r(double v) { return log2(v); }
__device__ __forceinline__ float exp2r(float v) { return exp2f(v); }
__device__ __forceinline__ double exp2r(double v) { return exp2(v); }

// Pixel p of item n, channel chunk q: thread index i = (n * Q + q) * HW + p.
struct LrnSite {
  int base;    // element index of channel 0 of this pixel
  int c0, c1;  // the chunk's channels
};

__device__ __forceinline__ LrnSite lrn_site(int i, int C, int HW, int chunk, int Q) {
  const int t = i / HW;
  const int p = i - t * HW;
  const int n = t / Q;
  const int q = t - n * Q;
  LrnSite s;
  s.base = n * C * HW + p;
  s.c0 = q * chunk;
  s.c1 = min(C, s.c0 + chunk);
  return s;
}

// ---- forward ---------------------------------------------------------------------------------

template <typename T, int SIZE>
__device__ __forceinline__ void lrn_forward_ring(const T* __restrict__ x, T* __restrict__ y,
                                                 T* __restrict__ scale, const LrnSite& s, int C,
                                                 int HW, T alpha, T beta, T k) {
  constexpr int pre = SIZE / 2, post = (SIZE - 1) / 2;
  // slot of channel j: (j - c0 + pre) mod SIZE. Window of channel c: j = c - pre + t, t < SIZE.
  T sq[SIZE], xv[SIZE];
#pragma unroll
  for (int t = 0; t < SIZE; ++t) {  // channels c0 - pre .. c0 + post - 1 (slot SIZE-1: unused)
    const int j = s.c0 - pre + t;
    const T v = (t < SIZE - 1 && j >= 0 && j < C) ? x[s.base + j * HW] : T(0);
    xv[t] = v;
    sq[t] = v * v;
  }
  for (int c = s.c0; c < s.c1; c += SIZE) {
#pragma unroll
    for (int u = 0; u < SIZE; ++u) {  // channel cc = c + u, (cc - c0) mod SIZE == u
      const int cc = c + u;
      if (cc < s.c1) {
        const int enter = cc + post;
        const T v = enter < C ? x[s.base + enter * HW] : T(0);
        xv[(u + SIZE - 1) % SIZE] = v;
        sq[(u + SIZE - 1) % SIZE] = v * v;
        T sum = T(0);
#pragma unroll
        for (int t = 0; t < SIZE; ++t) sum += sq[(u + t) % SIZE];
        const T sc = k + alpha * sum;
        const int at = s.base + cc * HW;
        scale[at] = sc;
        y[at] = xv[(u + pre) % SIZE] * exp2r(-beta * log2r(sc));
      }
    }
  }
}

template <typename T>
__device__ __forceinline__ void lrn_forward_generic(const T* __restrict__ x, T* __restrict__ y,
                                                    T* __restrict__ scale, const LrnSite& s,
                                                    int C, int HW, int size, T alpha, T beta,
                                                    T k) {
  const int pre = size / 2, post = (size - 1) / 2;
  for (int c = s.c0; c < s.c1; ++c) {
    T sum = T(0);
    const int j1 = min(C - 1, c + post);
    for (int j = max(0, c - pre); j <= j1; ++j) {
      const T v = x[s.base + j * HW];
      sum += v * v;
    }
    const T sc = k + alpha * sum;
    const int at = s.base + c * HW;
    scale[at] = sc;
    y[at] = x[at] * exp2r(-beta * log2r(sc));
  }
}

template <typename T>
__device__ __forceinline__ void lrn_forward_impl(const T* __restrict__ x, T* __restrict__ y,
                                                 T* __restrict__ scale, int N, int C, int HW,
                                                 int size, T alpha, T beta, T k, int chunk) {
  const int Q = (C + chunk - 1) / chunk;
  const int total = N * Q * HW;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
    const LrnSite s = lrn_site(i, C, HW, chunk, Q);
    if (size == 5) lrn_forward_ring<T, 5>(x, y, scale, s, C, HW, alpha, beta, k);
    else if (size == 3) lrn_forward_ring<T, 3>(x, y, scale, s, C, HW, alpha, beta, k);
    else lrn_forward_generic<T>(x, y, scale, s, C, HW, size, alpha, beta, k);
  }
}

// ---- backward --------------------------------------------------------------------------------

// What channel j contributes, computed once when it enters: r = g*a*s^(-beta-1) for the window
// sums, and g*s^(-beta), a for when j is the centre.
template <typename T>
__device__ __forceinline__ void lrn_backward_terms(const T* __restrict__ x,
                                                   const T* __restrict__ scale,
                                                   const T* __restrict__ gy, int at, T beta,
                                                   T& r, T& gp, T& a) {
  const T l = log2r(scale[at]);
  const T g = gy[at];
  a = x[at];
  gp = g * exp2r(-beta * l);
  r = g * a * exp2r(-(beta + T(1)) * l);
}

template <typename T, int SIZE>
__device__ __forceinline__ void lrn_backward_ring(const T* __restrict__ x,
                                                  const T* __restrict__ scale,
                                                  const T* __restrict__ gy, T* __restrict__ gx,
                                                  const LrnSite& s, int C, int HW, T alpha,
                                                  T beta) {
  constexpr int pre = SIZE / 2, post = (SIZE - 1) / 2;
  // slot of channel j: (j - c0 + post) mod SIZE. Mirror window of c: j = c - post + t.
  T r[SIZE], gp[SIZE], a[SIZE];
#pragma unroll
  for (int t = 0; t < SIZE; ++t) {  // channels c0 - post .. c0 + pre - 1 (slot SIZE-1: unused)
    const int j = s.c0 - post + t;
    r[t] = gp[t] = a[t] = T(0);
    if (t < SIZE - 1 && j >= 0 && j < C)
      lrn_backward_terms(x, scale, gy, s.base + j * HW, beta, r[t], gp[t], a[t]);
  }
  const T two_ab = T(2) * alpha * beta;
  for (int c = s.c0; c < s.c1; c += SIZE) {
#pragma unroll
    for (int u = 0; u < SIZE; ++u) {
      const int cc = c + u;
      if (cc < s.c1) {
        const int enter = cc + pre, e = (u + SIZE - 1) % SIZE;
        r[e] = gp[e] = a[e] = T(0);
        if (enter < C)
          lrn_backward_terms(x, scale, gy, s.base + enter * HW, beta, r[e], gp[e], a[e]);
        T sum = T(0);
#pragma unroll
        for (int t = 0; t < SIZE; ++t) sum += r[(u + t) % SIZE];
        const int m = (u + post) % SIZE;
        gx[s.base + cc * HW] = gp[m] - two_ab * a[m] * sum;
      }
    }
  }
}

template <typename T>
__device__ __forceinline__ void lrn_backward_generic(const T* __restrict__ x,
                                                     const T* __restrict__ scale,
                                                     const T* __restrict__ gy,
                                                     T* __restrict__ gx, const LrnSite& s, int C,
                                                     int HW, int size, T alpha, T beta) {
  const int pre = size / 2, post = (size - 1) / 2;
  const T two_ab = T(2) * alpha * beta;
  for (int c = s.c0; c < s.c1; ++c) {
    T sum = T(0), r, gp, a;
    const int j1 = min(C - 1, c + pre);
    for (int j = max(0, c - post); j <= j1; ++j) {
      lrn_backward_terms(x, scale, gy, s.base + j * HW, beta, r, gp, a);
      sum += r;
    }
    lrn_backward_terms(x, scale, gy, s.base + c * HW, beta, r, gp, a);
    gx[s.base + c * HW] = gp - two_ab * a * sum;
  }
}

template <typename T>
__device__ __forceinline__ void lrn_backward_impl(const T* __restrict__ x,
                                                  const T* __restrict__ scale,
                                                  const T* __restrict__ gy, T* __restrict__ gx,
                                                  int N, int C, int HW, int size, T alpha, T beta,
                                                  int chunk) {
  const int Q = (C + chunk - 1) / chunk;
  const int total = N * Q * HW;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
    const LrnSite s = lrn_site(i, C, HW, chunk, Q);
    if (size == 5) lrn_backward_ring<T, 5>(x, scale, gy, gx, s, C, HW, alpha, beta);
    else if (size == 3) lrn_backward_ring<T, 3>(x, scale, gy, gx, s, C, HW, alpha, beta);
    else lrn_backward_generic<T>(x, scale, gy, gx, s, C, HW, size, alpha, beta);
  }
}

// Entry points. chunk >= 1 channels per thread; the grid covers N * ceil(C/chunk) * HW threads.
extern "C" __global__ void lrn_forward_f32(const float* __restrict__ x, float* __restrict__ y,
                                           float* __restrict__ scale, int N, int C, int HW,
                                           int size, float alpha, float beta, float k, int chunk) {
  lrn_forward_impl<float>(x, y, scale, N, C, HW, size, alpha, beta, k, chunk);
}

extern "C" __global__ void lrn_forward_f64(const double* __restrict__ x, double* __restrict__ y,
                                           double* __restrict__ scale, int N, int C, int HW,
                                           int size, double alpha, double beta, double k,
                                           int chunk) {
  lrn_forward_impl<double>(x, y, scale, N, C, HW, size, alpha, beta, k, chunk);
}

extern "C" __global__ void lrn_backward_f32(const float* __restrict__ x,
                                            const float* __restrict__ scale,
                                            const float* __restrict__ gy, float* __restrict__ gx,
                                            int N, int C, int HW, int size, float alpha,
                                            float beta, int chunk) {
  lrn_backward_impl<float>(x, scale, gy, gx, N, C, HW, size, alpha, beta, chunk);
}

extern "C" __global__ void lrn_backward_f64(const double* __restrict__ x,
                                            const double* __restrict__ scale,
                                            const double* __restrict__ gy,
                                            double* __restrict__ gx, int N, int C, int HW,
                                            int size, double alpha, double beta, int chunk) {
  lrn_backward_impl<double>(x, scale, gy, gx, N, C, HW, size, alpha, beta, chunk);
}
