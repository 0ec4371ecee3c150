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
//   dL/da_i = g_i * s_i^(-beta) - 2 * alpha * beta * a_i * sum_{j : i in window(j)} g_j * b_j / s_j
//
// (using d s_j / d a_i = 2 alpha a_i and d b_j / d s_j = -beta b_j / s_j). i is in window(j)
// iff j - n/2 <= i <= j + (n-1)/2, i.e. j in [i - (n-1)/2, i + n/2]: the mirror image of the
// forward window (the same set only for odd n).
//
// One thread per pixel (n, h, w) walks the C channels keeping a running window sum: add the
// channel entering, subtract the one leaving -- O(C) work per pixel rather than O(C*n). The
// channel stride is H*W, so consecutive threads (consecutive w) read consecutive addresses.
// Accumulation is in the input's precision (float32 for the f32 kernels), but compensated: a plain
// running sum that adds a large a_j^2 and later subtracts it keeps an error of about one ulp of
// that LARGE value, which for a window of small values after a spike (activations spanning 1e3)
// is a relative error of 1e-4 and more in s_i. The sum is kept as an unevaluated pair (s, c)
// updated with Knuth's error-free TwoSum (additions only, so no FMA contraction can break it):
// the spike's rounding error is carried in c and cancels exactly when the spike leaves. The sum
// is clamped at 0 so s_i >= k always.

// s + c += v without losing the rounding error (TwoSum): see the header.
template <typename T>
__device__ __forceinline__ void add_compensated(T& s, T& c, T v) {
  const T t = s + v;
  const T vv = t - s;
  c += (s - (t - vv)) + (v - vv);
  s = t;
}

__device__ __forceinline__ float powr(float b, float e) { return powf(b, e); }
__device__ __forceinline__ double powr(double b, double e) { return pow(b, e); }
__device__ __forceinline__ float maxr(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double maxr(double a, double b) { return fmax(a, b); }

template <typename T>
__device__ __forceinline__ void lrn_forward_impl(const T* __restrict__ x, T* __restrict__ y,
                                                 T* __restrict__ scale, int N, int C, int HW,
                                                 int size, T alpha, T beta, T k) {
  const int pre = size / 2;         // channels below i in its window
  const int post = (size - 1) / 2;  // channels above i
  for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < N * HW; p += blockDim.x * gridDim.x) {
    const int n = p / HW;
    const int base = n * C * HW + (p - n * HW);  // channel 0 of this pixel
    T acc = T(0), comp = T(0);  // the window's sum of squares is acc + comp
    for (int j = 0; j < post && j < C; ++j) {  // the part of window(0) above channel 0
      const T v = x[base + j * HW];
      add_compensated(acc, comp, v * v);
    }
    for (int c = 0; c < C; ++c) {
      const int enter = c + post, leave = c - pre - 1;
      if (enter < C) { const T v = x[base + enter * HW]; add_compensated(acc, comp, v * v); }
      if (leave >= 0) { const T v = x[base + leave * HW]; add_compensated(acc, comp, -(v * v)); }
      const T s = k + alpha * maxr(acc + comp, T(0));
      const int at = base + c * HW;
      scale[at] = s;
      y[at] = x[at] * powr(s, -beta);
    }
  }
}

template <typename T>
__device__ __forceinline__ void lrn_backward_impl(const T* __restrict__ x, const T* __restrict__ y,
                                                  const T* __restrict__ scale,
                                                  const T* __restrict__ gy, T* __restrict__ gx,
                                                  int N, int C, int HW, int size, T alpha, T beta) {
  const int pre = size / 2;
  const int post = (size - 1) / 2;
  // j ranges over [c - post, c + pre] for channel c (see the header).
  for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < N * HW; p += blockDim.x * gridDim.x) {
    const int n = p / HW;
    const int base = n * C * HW + (p - n * HW);
    T acc = T(0), comp = T(0);  // sum of r_j = g_j * b_j / s_j over the window: acc + comp
    for (int j = 0; j < pre && j < C; ++j) {
      const int at = base + j * HW;
      add_compensated(acc, comp, gy[at] * y[at] / scale[at]);
    }
    for (int c = 0; c < C; ++c) {
      const int enter = c + pre, leave = c - post - 1;
      if (enter < C) {
        const int at = base + enter * HW;
        add_compensated(acc, comp, gy[at] * y[at] / scale[at]);
      }
      if (leave >= 0) {
        const int at = base + leave * HW;
        add_compensated(acc, comp, -(gy[at] * y[at] / scale[at]));
      }
      const int at = base + c * HW;
      gx[at] = gy[at] * powr(scale[at], -beta) - T(2) * alpha * beta * x[at] * (acc + comp);
    }
  }
}

extern "C" __global__ void lrn_forward_f32(const float* __restrict__ x, float* __restrict__ y,
                                           float* __restrict__ scale, int N, int C, int HW,
                                           int size, float alpha, float beta, float k) {
  lrn_forward_impl<float>(x, y, scale, N, C, HW, size, alpha, beta, k);
}

extern "C" __global__ void lrn_forward_f64(const double* __restrict__ x, double* __restrict__ y,
                                           double* __restrict__ scale, int N, int C, int HW,
                                           int size, double alpha, double beta, double k) {
  lrn_forward_impl<double>(x, y, scale, N, C, HW, size, alpha, beta, k);
}

extern "C" __global__ void lrn_backward_f32(const float* __restrict__ x, const float* __restrict__ y,
                                            const float* __restrict__ scale,
                                            const float* __restrict__ gy, float* __restrict__ gx,
                                            int N, int C, int HW, int size, float alpha,
                                            float beta) {
  lrn_backward_impl<float>(x, y, scale, gy, gx, N, C, HW, size, alpha, beta);
}

extern "C" __global__ void lrn_backward_f64(const double* __restrict__ x,
                                            const double* __restrict__ y,
                                            const double* __restrict__ scale,
                                            const double* __restrict__ gy, double* __restrict__ gx,
                                            int N, int C, int HW, int size, double alpha,
                                            double beta) {
  lrn_backward_impl<double>(x, y, scale, gy, gx, N, C, HW, size, alpha, beta);
}
