// prelu.cu -- parametric ReLU (He, Zhang, Ren, Sun 2015, "Delving Deep into Rectifiers", eq. 1).
//
//   f(y_i) = y_i          if y_i > 0
//          = a_c * y_i    if y_i <= 0      (a_c: the slope of y_i's channel c, or one shared a)
//
// Gradients (the paper's eq. 2 and 3), with g = dE/df:
//
//   dE/dy_i = g_i                 if y_i > 0,   a_c * g_i otherwise
//   dE/da_c = sum over every i of channel c (all batch items and positions) of g_i * y_i [y_i <= 0]
//
// (channel-shared: one sum over everything). x is (N, C, S) flattened -- S = H*W, or 1 for a
// (N, C) input -- and the slope index of element i is (i / S) % C, or 0 when shared (tracked
// without a division per element, see ChannelWalk).
//
// The slope gradient is a big reduction (AlexNet-sized conv1 output: 37M terms into 96 sums, or
// into ONE sum when shared -- where frameworks that reduce with atomics serialize). The backward
// is ONE pass over x and dy (12 bytes per element: x, dy read once, dx written once) plus a tiny
// second stage, deterministic:
//   1. prelu_backward_partial: a grid of P x G blocks; block (p, g) walks the elements of group
//      g at positions p*B + t, p*B + t + P*B, ... (a grid-stride loop inside the group), writes
//      dx for each and sums the slope terms, then reduces its B threads (warp shuffles, then one
//      shared-memory slot per warp) to partial[g*P + p];
//   2. prelu_slope_final: one block per group sums its P partials in a fixed order.
// (prelu_backward_x alone serves the case where the slope needs no gradient.)
// Same sizes -> same summation tree -> bit-identical results run to run (no atomics).
// A channel-wise group g holds the elements (n, g, s); the shared case is the same kernel with
// one group of C*S consecutive elements per item (C = 1, S = C*S).

// The channel of element i is (i / S) % C. Integer division costs ~20 instructions on a GPU --
// more than this memory-bound kernel can hide per element -- so each thread divides once and
// then walks its grid-stride sequence i, i + stride, ... keeping (channel c, offset r in the
// channel's plane) with additions: stride = qs*S + rs, and c, r advance by (qs % C, rs) with a
// carry.
struct ChannelWalk {
  int c, r, cs, rs, C, S;
  __device__ __forceinline__ ChannelWalk(int i, int stride, int C_, int S_) : C(C_), S(S_) {
    const int q = i / S;
    r = i - q * S;
    c = q % C;
    const int qs = stride / S;
    rs = stride - qs * S;
    cs = qs % C;
  }
  __device__ __forceinline__ void next() {
    r += rs;
    c += cs;
    if (r >= S) { r -= S; ++c; }
    if (c >= C) c -= C;  // c < C + cs + 1 <= 2C - 1 before this
  }
};

template <typename T>
__device__ __forceinline__ void prelu_forward_impl(const T* __restrict__ x, const T* __restrict__ a,
                                                   T* __restrict__ y, int total, int C, int S,
                                                   int shared) {
  const int stride = blockDim.x * gridDim.x;
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  ChannelWalk ch(i, stride, shared ? 1 : C, shared ? total : S);
  for (; i < total; i += stride, ch.next()) {
    const T v = x[i];
    y[i] = v > T(0) ? v : a[ch.c] * v;
  }
}

template <typename T>
__device__ __forceinline__ void prelu_backward_x_impl(const T* __restrict__ x,
                                                      const T* __restrict__ a,
                                                      const T* __restrict__ gy,
                                                      T* __restrict__ gx, int total, int C, int S,
                                                      int shared) {
  const int stride = blockDim.x * gridDim.x;
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  ChannelWalk ch(i, stride, shared ? 1 : C, shared ? total : S);
  for (; i < total; i += stride, ch.next()) {
    const T g = gy[i];
    gx[i] = x[i] > T(0) ? g : a[ch.c] * g;
  }
}

// Sum of v over the block (any multiple of 32 threads up to 1024); the result is valid in
// thread 0. Every thread of the block must call it (it has barriers).
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* warp_sums) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nwarps ? warp_sums[lane] : T(0);
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  }
  __syncthreads();  // warp_sums may be reused by a following call
  return v;
}

// Stage 1, fused with dx. Grid (P, G). Group g has M = N*S elements: element m is
// (m / S) * C*S + g*S + m % S of x, dy and dx. partial has G*P entries.
template <typename T>
__device__ __forceinline__ void prelu_backward_partial_impl(const T* __restrict__ x,
                                                            const T* __restrict__ a,
                                                            const T* __restrict__ gy,
                                                            T* __restrict__ gx,
                                                            T* __restrict__ partial, int N, int C,
                                                            int S) {
  __shared__ T warp_sums[32];
  const int g = blockIdx.y, P = gridDim.x, M = N * S, stride = blockDim.x * P;
  const T slope = a[g];
  T acc = T(0);
  int m = blockIdx.x * blockDim.x + threadIdx.x;
  // element m = n*S + r is (n*C + g)*S + r; walk (n, r) by additions (see ChannelWalk)
  int n = m / S, r = m - (m / S) * S;
  const int ns = stride / S, rs = stride - ns * S;
  for (; m < M; m += stride) {
    const int at = (n * C + g) * S + r;
    const T v = x[at], d = gy[at];
    if (v > T(0)) {
      gx[at] = d;
    } else {
      gx[at] = slope * d;
      acc += d * v;
    }
    r += rs;
    n += ns;
    if (r >= S) { r -= S; ++n; }
  }
  acc = block_sum(acc, warp_sums);
  if (threadIdx.x == 0) partial[g * P + blockIdx.x] = acc;
}

// Stage 2. Grid (G): block g sums partial[g*P .. g*P + P - 1] into ga[g].
template <typename T>
__device__ __forceinline__ void prelu_slope_final_impl(const T* __restrict__ partial,
                                                       T* __restrict__ ga, int P) {
  __shared__ T warp_sums[32];
  const int g = blockIdx.x;
  T acc = T(0);
  for (int p = threadIdx.x; p < P; p += blockDim.x) acc += partial[g * P + p];
  acc = block_sum(acc, warp_sums);
  if (threadIdx.x == 0) ga[g] = acc;
}

extern "C" __global__ void prelu_forward_f32(const float* __restrict__ x, const float* __restrict__ a,
                                             float* __restrict__ y, int total, int C, int S,
                                             int shared) {
  prelu_forward_impl<float>(x, a, y, total, C, S, shared);
}
extern "C" __global__ void prelu_forward_f64(const double* __restrict__ x,
                                             const double* __restrict__ a, double* __restrict__ y,
                                             int total, int C, int S, int shared) {
  prelu_forward_impl<double>(x, a, y, total, C, S, shared);
}
extern "C" __global__ void prelu_backward_x_f32(const float* __restrict__ x,
                                                const float* __restrict__ a,
                                                const float* __restrict__ gy,
                                                float* __restrict__ gx, int total, int C, int S,
                                                int shared) {
  prelu_backward_x_impl<float>(x, a, gy, gx, total, C, S, shared);
}
extern "C" __global__ void prelu_backward_x_f64(const double* __restrict__ x,
                                                const double* __restrict__ a,
                                                const double* __restrict__ gy,
                                                double* __restrict__ gx, int total, int C, int S,
                                                int shared) {
  prelu_backward_x_impl<double>(x, a, gy, gx, total, C, S, shared);
}
extern "C" __global__ void prelu_backward_partial_f32(const float* __restrict__ x,
                                                      const float* __restrict__ a,
                                                      const float* __restrict__ gy,
                                                      float* __restrict__ gx,
                                                      float* __restrict__ partial, int N, int C,
                                                      int S) {
  prelu_backward_partial_impl<float>(x, a, gy, gx, partial, N, C, S);
}
extern "C" __global__ void prelu_backward_partial_f64(const double* __restrict__ x,
                                                      const double* __restrict__ a,
                                                      const double* __restrict__ gy,
                                                      double* __restrict__ gx,
                                                      double* __restrict__ partial, int N, int C,
                                                      int S) {
  prelu_backward_partial_impl<double>(x, a, gy, gx, partial, N, C, S);
}
extern "C" __global__ void prelu_slope_final_f32(const float* __restrict__ partial,
                                                 float* __restrict__ ga, int P) {
  prelu_slope_final_impl<float>(partial, ga, P);
}
extern "C" __global__ void prelu_slope_final_f64(const double* __restrict__ partial,
                                                 double* __restrict__ ga, int P) {
  prelu_slope_final_impl<double>(partial, ga, P);
}
