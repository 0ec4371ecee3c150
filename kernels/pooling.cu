// pooling.cu -- 2-D max and average pooling, forward and backward (AlexNet 3.4: overlapping
// pooling, window z = 3 with stride s = 2).
//
// Output position (oh, ow) of plane (n, c) pools the window rows [oh*SH - PH, oh*SH - PH + KH)
// and columns [ow*SW - PW, ow*SW - PW + KW) of the input plane (H, W). OH and OW come from the
// launcher (torch's rule: floor, or ceil in ceil_mode where a last window starting inside the
// right/bottom padding is dropped).
//
// Max:   y = max over the window of x (padding is -inf, never chosen). A value v wins if
//        v > max || isnan(v): the first maximum in row-major window order wins ties and a NaN
//        propagates. argmax = h*W + w of the winner, per plane (-1 if the window holds no input).
//        dL/dx[h, w] = sum of g[oh, ow] over the windows whose argmax is (h, w).
// Average: y = (sum of the window's in-image x) / d, where d (torch's divisor) counts, with
//        count_include_pad, the window clipped to the padded image [-P, H + P), else only the
//        in-image positions. dL/dx[h, w] = sum over windows covering (h, w) of g[oh, ow] / d(oh, ow).
//
// Forward: one thread per output element. Backward: one thread per INPUT element, gathering
// from the windows that cover it -- rows oh in [ceil((h + PH - KH + 1) / SH), (h + PH) / SH],
// at most ceil(KH/SH) of them (the same for columns) -- so no atomics and a fixed sum order.
//
// No division chains in the hot loops: every integer division (the element index into
// (plane, row, column); the covering windows' bounds by the stride) is a multiply-high and a
// shift by a divisor the launcher precomputed (fast_div). The average's divisor is separable,
// d(oh, ow) = dh(oh) * dw(ow) (both for count_include_pad and without), so the backward takes
// one reciprocal per covering row and per covering column and multiplies: gy * (1/dh * 1/dw)
// (two more roundings than gy / d: float32 tolerance, not bit-identity with the NumPy path).

// n / d for 0 <= n < 2^31 by a multiply-high and a shift. m packs mul | shr << 32 from the
// launcher (minidl.cuda.kernels.fast_divisor): l = ceil(log2 d), mul = ceil(2^(31 + l) / d),
// shr = l - 1; mul = 0 encodes d = 1. Exact for every such n (Granlund & Montgomery 1994, the
// scheme of CUTLASS's FastDivmod; the launcher's test checks it against // at the edges).
__device__ __forceinline__ int fast_div(int n, unsigned long long m) {
  const unsigned mul = (unsigned)m;
  return mul ? (int)(__umulhi((unsigned)n, mul) >> (unsigned)(m >> 32)) : n;
}

__device__ __forceinline__ bool is_nan(float v) { return isnan(v); }
__device__ __forceinline__ bool is_nan(double v) { return isnan(v); }
__device__ __forceinline__ float neg_inf(float) { return -__int_as_float(0x7f800000); }
__device__ __forceinline__ double neg_inf(double) { return -__longlong_as_double(0x7ff0000000000000LL); }

// First and one-past-last output index whose window covers input index i (ds: the stride).
__device__ __forceinline__ int first_window(int i, int pad, int k, unsigned long long ds) {
  return (i + pad < k) ? 0 : fast_div(i + pad - k, ds) + 1;
}
__device__ __forceinline__ int end_window(int i, int pad, unsigned long long ds, int out) {
  return min(fast_div(i + pad, ds) + 1, out);
}

// The packed divisors (see fast_div) every pooling kernel takes, in this order.
struct PoolDivs {
  unsigned long long W, H, OW, OH, SH, SW;
};

template <typename T>
__device__ __forceinline__ void max_pool_forward_impl(const T* __restrict__ x, T* __restrict__ y,
                                                      int* __restrict__ argmax, int NC, int H,
                                                      int W, int OH, int OW, int KH, int KW,
                                                      int SH, int SW, int PH, int PW,
                                                      const PoolDivs& dv) {
  const int total = NC * OH * OW;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
    const int t = fast_div(i, dv.OW);
    const int ow = i - t * OW;
    const int nc = fast_div(t, dv.OH);
    const int oh = t - nc * OH;
    const T* xp = x + nc * H * W;
    const int h0 = oh * SH - PH, w0 = ow * SW - PW;
    const int hs = max(h0, 0), he = min(h0 + KH, H);
    const int ws = max(w0, 0), we = min(w0 + KW, W);
    // As torch: the max starts at -inf with the index of the window's first element, so a
    // window of -inf still routes its gradient somewhere.
    T m = neg_inf(T(0));
    int idx = (hs < he && ws < we) ? hs * W + ws : -1;
    for (int h = hs; h < he; ++h) {
      for (int w = ws; w < we; ++w) {
        const T v = xp[h * W + w];
        if (v > m || is_nan(v)) { m = v; idx = h * W + w; }
      }
    }
    y[i] = m;
    argmax[i] = idx;
  }
}

template <typename T>
__device__ __forceinline__ void max_pool_backward_impl(const T* __restrict__ gy,
                                                       const int* __restrict__ argmax,
                                                       T* __restrict__ gx, int NC, int H, int W,
                                                       int OH, int OW, int KH, int KW, int SH,
                                                       int SW, int PH, int PW,
                                                       const PoolDivs& dv) {
  const int total = NC * H * W;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
    const int t = fast_div(i, dv.W);
    const int w = i - t * W;
    const int nc = fast_div(t, dv.H);
    const int h = t - nc * H;
    const int me = h * W + w;
    const int off = nc * OH * OW;
    const int ohs = first_window(h, PH, KH, dv.SH), ohe = end_window(h, PH, dv.SH, OH);
    const int ows = first_window(w, PW, KW, dv.SW), owe = end_window(w, PW, dv.SW, OW);
    T acc = T(0);
    for (int oh = ohs; oh < ohe; ++oh)
      for (int ow = ows; ow < owe; ++ow)
        if (argmax[off + oh * OW + ow] == me) acc += gy[off + oh * OW + ow];
    gx[i] = acc;
  }
}

// torch's divisor along one axis for output index o: the window [o*S - P, o*S - P + K) clipped
// to the padded extent [-P, size + P) (count_include_pad), else to the input [0, size).
// d(oh, ow) = avg_extent(oh, ...) * avg_extent(ow, ...).
__device__ __forceinline__ int avg_extent(int o, int size, int K, int S, int P,
                                          int count_include_pad) {
  const int s = o * S - P;
  const int e = min(s + K, size + P);
  return count_include_pad ? e - s : min(e, size) - max(s, 0);
}

template <typename T>
__device__ __forceinline__ void avg_pool_forward_impl(const T* __restrict__ x, T* __restrict__ y,
                                                      int NC, int H, int W, int OH, int OW, int KH,
                                                      int KW, int SH, int SW, int PH, int PW,
                                                      int count_include_pad, const PoolDivs& dv) {
  const int total = NC * OH * OW;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
    const int t = fast_div(i, dv.OW);
    const int ow = i - t * OW;
    const int nc = fast_div(t, dv.OH);
    const int oh = t - nc * OH;
    const T* xp = x + nc * H * W;
    const int h0 = oh * SH - PH, w0 = ow * SW - PW;
    const int hs = max(h0, 0), he = min(h0 + KH, H);
    const int ws = max(w0, 0), we = min(w0 + KW, W);
    T acc = T(0);
    for (int h = hs; h < he; ++h)
      for (int w = ws; w < we; ++w) acc += xp[h * W + w];
    const int d = avg_extent(oh, H, KH, SH, PH, count_include_pad) *
                  avg_extent(ow, W, KW, SW, PW, count_include_pad);
    y[i] = acc / T(d);
  }
}

template <typename T>
__device__ __forceinline__ void avg_pool_backward_impl(const T* __restrict__ gy,
                                                       T* __restrict__ gx, int NC, int H, int W,
                                                       int OH, int OW, int KH, int KW, int SH,
                                                       int SW, int PH, int PW,
                                                       int count_include_pad,
                                                       const PoolDivs& dv) {
  const int total = NC * H * W;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
    const int t = fast_div(i, dv.W);
    const int w = i - t * W;
    const int nc = fast_div(t, dv.H);
    const int h = t - nc * H;
    const int off = nc * OH * OW;
    const int ohs = first_window(h, PH, KH, dv.SH), ohe = end_window(h, PH, dv.SH, OH);
    const int ows = first_window(w, PW, KW, dv.SW), owe = end_window(w, PW, dv.SW, OW);
    T acc = T(0);
    for (int oh = ohs; oh < ohe; ++oh) {
      const T rh = T(1) / T(avg_extent(oh, H, KH, SH, PH, count_include_pad));
      for (int ow = ows; ow < owe; ++ow) {
        const T rw = T(1) / T(avg_extent(ow, W, KW, SW, PW, count_include_pad));
        acc += gy[off + oh * OW + ow] * (rh * rw);
      }
    }
    gx[i] = acc;
  }
}

// Entry points. Shape arguments: NC = N*C planes of H x W in, OH x OW out; window KH x KW,
// stride SH, SW; padding PH, PW; then the packed divisors of W, H, OW, OH, SH, SW (fast_div).
#define POOL_ENTRY_DIVS                                                                        \
  PoolDivs dv;                                                                                  \
  dv.W = dW; dv.H = dH; dv.OW = dOW; dv.OH = dOH; dv.SH = dSH; dv.SW = dSW;

extern "C" __global__ void max_pool2d_forward_f32(
    const float* __restrict__ x, float* __restrict__ y, int* __restrict__ argmax,
    int NC, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW,
    unsigned long long dW, unsigned long long dH, unsigned long long dOW, unsigned long long dOH,
    unsigned long long dSH, unsigned long long dSW) {
  POOL_ENTRY_DIVS
  max_pool_forward_impl<float>(x, y, argmax, NC, H, W, OH, OW, KH, KW, SH, SW, PH, PW, dv);
}
extern "C" __global__ void max_pool2d_backward_f32(
    const float* __restrict__ gy, const int* __restrict__ argmax, float* __restrict__ gx,
    int NC, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW,
    unsigned long long dW, unsigned long long dH, unsigned long long dOW, unsigned long long dOH,
    unsigned long long dSH, unsigned long long dSW) {
  POOL_ENTRY_DIVS
  max_pool_backward_impl<float>(gy, argmax, gx, NC, H, W, OH, OW, KH, KW, SH, SW, PH, PW, dv);
}
extern "C" __global__ void avg_pool2d_forward_f32(
    const float* __restrict__ x, float* __restrict__ y,
    int NC, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW,
    int count_include_pad,
    unsigned long long dW, unsigned long long dH, unsigned long long dOW, unsigned long long dOH,
    unsigned long long dSH, unsigned long long dSW) {
  POOL_ENTRY_DIVS
  avg_pool_forward_impl<float>(x, y, NC, H, W, OH, OW, KH, KW, SH, SW, PH, PW,
                               count_include_pad, dv);
}
extern "C" __global__ void avg_pool2d_backward_f32(
    const float* __restrict__ gy, float* __restrict__ gx,
    int NC, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW,
    int count_include_pad,
    unsigned long long dW, unsigned long long dH, unsigned long long dOW, unsigned long long dOH,
    unsigned long long dSH, unsigned long long dSW) {
  POOL_ENTRY_DIVS
  avg_pool_backward_impl<float>(gy, gx, NC, H, W, OH, OW, KH, KW, SH, SW, PH, PW,
                                count_include_pad, dv);
}
extern "C" __global__ void max_pool2d_forward_f64(
    const double* __restrict__ x, double* __restrict__ y, int* __restrict__ argmax,
    int NC, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW,
    unsigned long long dW, unsigned long long dH, unsigned long long dOW, unsigned long long dOH,
    unsigned long long dSH, unsigned long long dSW) {
  POOL_ENTRY_DIVS
  max_pool_forward_impl<double>(x, y, argmax, NC, H, W, OH, OW, KH, KW, SH, SW, PH, PW, dv);
}
extern "C" __global__ void max_pool2d_backward_f64(
    const double* __restrict__ gy, const int* __restrict__ argmax, double* __restrict__ gx,
    int NC, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW,
    unsigned long long dW, unsigned long long dH, unsigned long long dOW, unsigned long long dOH,
    unsigned long long dSH, unsigned long long dSW) {
  POOL_ENTRY_DIVS
  max_pool_backward_impl<double>(gy, argmax, gx, NC, H, W, OH, OW, KH, KW, SH, SW, PH, PW, dv);
}
extern "C" __global__ void avg_pool2d_forward_f64(
    const double* __restrict__ x, double* __restrict__ y,
    int NC, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW,
    int count_include_pad,
    unsigned long long dW, unsigned long long dH, unsigned long long dOW, unsigned long long dOH,
    unsigned long long dSH, unsigned long long dSW) {
  POOL_ENTRY_DIVS
  avg_pool_forward_impl<double>(x, y, NC, H, W, OH, OW, KH, KW, SH, SW, PH, PW,
                                count_include_pad, dv);
}
extern "C" __global__ void avg_pool2d_backward_f64(
    const double* __restrict__ gy, double* __restrict__ gx,
    int NC, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW,
    int count_include_pad,
    unsigned long long dW, unsigned long long dH, unsigned long long dOW, unsigned long long dOH,
    unsigned long long dSH, unsigned long long dSW) {
  POOL_ENTRY_DIVS
  avg_pool_backward_impl<double>(gy, gx, NC, H, W, OH, OW, KH, KW, SH, SW, PH, PW,
                                 count_include_pad, dv);
}
