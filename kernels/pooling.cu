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

__device__ __forceinline__ bool is_nan(float v) { return isnan(v); }
__device__ __forceinline__ bool is_nan(double v) { return isnan(v); }
__device__ __forceinline__ float neg_inf(float) { return -__int_as_float(0x7f800000); }
__device__ __forceinline__ double neg_inf(double) { return -__longlong_as_double(0x7ff0000000000000LL); }

// First and one-past-last output index whose window covers input index i.
__device__ __forceinline__ int first_window(int i, int pad, int k, int s) {
  return (i + pad < k) ? 0 : (i + pad - k) / s + 1;
}
__device__ __forceinline__ int end_window(int i, int pad, int s, int out) {
  return min((i + pad) / s + 1, out);
}

template <typename T>
__device__ __forceinline__ void max_pool_forward_impl(const T* __restrict__ x, T* __restrict__ y,
                                                      int* __restrict__ argmax, int NC, int H,
                                                      int W, int OH, int OW, int KH, int KW,
                                                      int SH, int SW, int PH, int PW) {
  const int total = NC * OH * OW;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
    const int ow = i % OW;
    const int oh = (i / OW) % OH;
    const int nc = i / (OW * OH);
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
                                                       int SW, int PH, int PW) {
  const int total = NC * H * W;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
    const int w = i % W;
    const int h = (i / W) % H;
    const int nc = i / (W * H);
    const int me = h * W + w;
    const int off = nc * OH * OW;
    const int ohs = first_window(h, PH, KH, SH), ohe = end_window(h, PH, SH, OH);
    const int ows = first_window(w, PW, KW, SW), owe = end_window(w, PW, SW, OW);
    T acc = T(0);
    for (int oh = ohs; oh < ohe; ++oh)
      for (int ow = ows; ow < owe; ++ow)
        if (argmax[off + oh * OW + ow] == me) acc += gy[off + oh * OW + ow];
    gx[i] = acc;
  }
}

// torch's divisor for window (oh, ow): see the header.
__device__ __forceinline__ int avg_divisor(int oh, int ow, int H, int W, int KH, int KW, int SH,
                                           int SW, int PH, int PW, int count_include_pad) {
  int hs = oh * SH - PH, ws = ow * SW - PW;
  int he = min(hs + KH, H + PH), we = min(ws + KW, W + PW);
  const int padded = (he - hs) * (we - ws);
  hs = max(hs, 0); ws = max(ws, 0);
  he = min(he, H); we = min(we, W);
  return count_include_pad ? padded : (he - hs) * (we - ws);
}

template <typename T>
__device__ __forceinline__ void avg_pool_forward_impl(const T* __restrict__ x, T* __restrict__ y,
                                                      int NC, int H, int W, int OH, int OW, int KH,
                                                      int KW, int SH, int SW, int PH, int PW,
                                                      int count_include_pad) {
  const int total = NC * OH * OW;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
    const int ow = i % OW;
    const int oh = (i / OW) % OH;
    const int nc = i / (OW * OH);
    const T* xp = x + nc * H * W;
    const int h0 = oh * SH - PH, w0 = ow * SW - PW;
    const int hs = max(h0, 0), he = min(h0 + KH, H);
    const int ws = max(w0, 0), we = min(w0 + KW, W);
    T acc = T(0);
    for (int h = hs; h < he; ++h)
      for (int w = ws; w < we; ++w) acc += xp[h * W + w];
    y[i] = acc / T(avg_divisor(oh, ow, H, W, KH, KW, SH, SW, PH, PW, count_include_pad));
  }
}

template <typename T>
__device__ __forceinline__ void avg_pool_backward_impl(const T* __restrict__ gy,
                                                       T* __restrict__ gx, int NC, int H, int W,
                                                       int OH, int OW, int KH, int KW, int SH,
                                                       int SW, int PH, int PW,
                                                       int count_include_pad) {
  const int total = NC * H * W;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
    const int w = i % W;
    const int h = (i / W) % H;
    const int nc = i / (W * H);
    const int off = nc * OH * OW;
    const int ohs = first_window(h, PH, KH, SH), ohe = end_window(h, PH, SH, OH);
    const int ows = first_window(w, PW, KW, SW), owe = end_window(w, PW, SW, OW);
    T acc = T(0);
    for (int oh = ohs; oh < ohe; ++oh)
      for (int ow = ows; ow < owe; ++ow)
        acc += gy[off + oh * OW + ow] /
               T(avg_divisor(oh, ow, H, W, KH, KW, SH, SW, PH, PW, count_include_pad));
    gx[i] = acc;
  }
}


// Entry points. Shape arguments: NC = N*C planes of H x W in, OH x OW out; window KH x KW,
// stride SH, SW; padding PH, PW.
extern "C" __global__ void max_pool2d_forward_f32(
    const float* __restrict__ x, float* __restrict__ y, int* __restrict__ argmax,
    int NC, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW) {
  max_pool_forward_impl<float>(x, y, argmax, NC, H, W, OH, OW, KH, KW, SH, SW, PH, PW);
}
extern "C" __global__ void max_pool2d_backward_f32(
    const float* __restrict__ gy, const int* __restrict__ argmax, float* __restrict__ gx,
    int NC, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW) {
  max_pool_backward_impl<float>(gy, argmax, gx, NC, H, W, OH, OW, KH, KW, SH, SW, PH, PW);
}
extern "C" __global__ void avg_pool2d_forward_f32(
    const float* __restrict__ x, float* __restrict__ y,
    int NC, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW, int count_include_pad) {
  avg_pool_forward_impl<float>(x, y, NC, H, W, OH, OW, KH, KW, SH, SW, PH, PW, count_include_pad);
}
extern "C" __global__ void avg_pool2d_backward_f32(
    const float* __restrict__ gy, float* __restrict__ gx,
    int NC, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW, int count_include_pad) {
  avg_pool_backward_impl<float>(gy, gx, NC, H, W, OH, OW, KH, KW, SH, SW, PH, PW, count_include_pad);
}
extern "C" __global__ void max_pool2d_forward_f64(
    const double* __restrict__ x, double* __restrict__ y, int* __restrict__ argmax,
    int NC, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW) {
  max_pool_forward_impl<double>(x, y, argmax, NC, H, W, OH, OW, KH, KW, SH, SW, PH, PW);
}
extern "C" __global__ void max_pool2d_backward_f64(
    const double* __restrict__ gy, const int* __restrict__ argmax, double* __restrict__ gx,
    int NC, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW) {
  max_pool_backward_impl<double>(gy, argmax, gx, NC, H, W, OH, OW, KH, KW, SH, SW, PH, PW);
}
extern "C" __global__ void avg_pool2d_forward_f64(
    const double* __restrict__ x, double* __restrict__ y,
    int NC, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW, int count_include_pad) {
  avg_pool_forward_impl<double>(x, y, NC, H, W, OH, OW, KH, KW, SH, SW, PH, PW, count_include_pad);
}
extern "C" __global__ void avg_pool2d_backward_f64(
    const double* __restrict__ gy, double* __restrict__ gx,
    int NC, int H, int W, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW, int count_include_pad) {
  avg_pool_backward_impl<double>(gy, gx, NC, H, W, OH, OW, KH, KW, SH, SW, PH, PW, count_include_pad);
}
