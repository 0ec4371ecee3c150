// im2col.cu -- unfold image patches into columns, and its adjoint, for convolution as a GEMM.
//
// Convolution (AlexNet sec. 3, every conv layer) of x (N, C, H, W) with weights (F, C, KH, KW):
//
//   y[n, f, oh, ow] = sum_{c, kh, kw} w[f, c, kh, kw] * x[n, c, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW]
//
// (out-of-image taps are zero padding). im2col copies every tap into
//
//   col[n, (c*KH + kh)*KW + kw, oh*OW + ow] = x[n, c, oh*SH - PH + kh*DH, ow*SW - PW + kw*DW]  (0 outside)
//
// -- exactly torch.nn.functional.unfold's layout -- so the convolution of one image is the
// matrix product W (F, C*KH*KW) @ col[n] (C*KH*KW, OH*OW), done by cuBLAS; with groups, each
// group is a block of rows of col and of W.
//
// The gradient: col is linear in x, so dL/dx is the adjoint (col2im, torch fold):
//
//   dx[n, c, h, w] = sum over (kh, kw, oh, ow) with oh*SH - PH + kh*DH = h and
//                    ow*SW - PW + kw*DW = w of dcol[n, (c*KH + kh)*KW + kw, oh*OW + ow]
//
// written as a GATHER: one thread per image element finds the (kh, oh) pairs that reach it, so
// no two threads write the same element -- no atomics, and the sum order is fixed
// (deterministic). Without dilation the rows oh that reach h form one interval (at most
// ceil(KH/SH) of them, as in pooling); with dilation each kh is tried and kept when
// (h + PH - kh*DH) / SH divides exactly and lies in [0, OH).
//
// One thread per (n, c, oh, ow) for im2col (it writes the KH*KW column entries of that output
// position, consecutive threads writing consecutive addresses); grid-stride loops everywhere.
// Indices are 32-bit: the launcher chunks the batch so N*C*KH*KW*OH*OW < 2^31.
// float and double entry points share one template.
//
// Column layout. `col` is addressed through two strides, so one kernel writes either layout:
//   row r = (c*KH + kh)*KW + kw of image n, column l = oh*OW + ow  is at  n*img + r*row + l
// per-image (torch's unfold, (N, C*KH*KW, L)): img = C*KH*KW*L, row = L; batch-wide (the
// (C*KH*KW, N*L) matrix the GPU convolution multiplies in ONE GEMM per group): img = L,
// row = N*L. col2im reads the same two strides.
//
// No division chains: the element index is split into (image-channel, row, column) and the
// covering output rows/columns found with fast_div (a multiply-high and a shift by divisors the
// launcher precomputed) instead of 32-bit divisions.

// n / d for 0 <= n < 2^31 by a multiply-high and a shift. m packs mul | shr << 32 from the
// launcher (minidl.cuda.kernels.fast_divisor): l = ceil(log2 d), mul = ceil(2^(31 + l) / d),
// shr = l - 1; mul = 0 encodes d = 1. Exact for every such n (Granlund & Montgomery 1994, the
// scheme of CUTLASS's FastDivmod).
__device__ __forceinline__ int fast_div(int n, unsigned long long m) {
  const unsigned mul = (unsigned)m;
  return mul ? (int)(__umulhi((unsigned)n, mul) >> (unsigned)(m >> 32)) : n;
}

template <typename T>
__device__ __forceinline__ void im2col_impl(const T* __restrict__ x, T* __restrict__ col, int N,
                                            int C, int H, int W, int KH, int KW, int SH, int SW,
                                            int PH, int PW, int DH, int DW, int OH, int OW,
                                            int img, int row, unsigned long long dOW,
                                            unsigned long long dOH, unsigned long long dC) {
  const int total = N * C * OH * OW;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
    const int t = fast_div(i, dOW);
    const int ow = i - t * OW;
    const int nc = fast_div(t, dOH);  // n*C + c
    const int oh = t - nc * OH;
    const int n = fast_div(nc, dC);
    const int c = nc - n * C;
    const T* xp = x + nc * H * W;
    // entry (c, kh, kw) of image n at n*img + ((c*KH + kh)*KW + kw)*row + oh*OW + ow
    T* cp = col + n * img + c * KH * KW * row + oh * OW + ow;
    const int h0 = oh * SH - PH, w0 = ow * SW - PW;
    for (int kh = 0; kh < KH; ++kh) {
      const int h = h0 + kh * DH;
      for (int kw = 0; kw < KW; ++kw) {
        const int w = w0 + kw * DW;
        *cp = (h >= 0 && h < H && w >= 0 && w < W) ? xp[h * W + w] : T(0);
        cp += row;
      }
    }
  }
}

template <typename T>
__device__ __forceinline__ void col2im_impl(const T* __restrict__ col, T* __restrict__ x, int N,
                                            int C, int H, int W, int KH, int KW, int SH, int SW,
                                            int PH, int PW, int DH, int DW, int OH, int OW,
                                            int img, int row, unsigned long long dW,
                                            unsigned long long dH, unsigned long long dC,
                                            unsigned long long dSH, unsigned long long dSW) {
  const int total = N * C * H * W;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
    const int t = fast_div(i, dW);
    const int w = i - t * W;
    const int nc = fast_div(t, dH);
    const int h = t - nc * H;
    const int n = fast_div(nc, dC);
    const int c = nc - n * C;
    const T* cp = col + n * img + c * KH * KW * row;
    T acc = T(0);
    if (DH == 1 && DW == 1) {
      // Undilated: the output rows reaching h are oh in [ceil((h + PH - KH + 1) / SH),
      // (h + PH) / SH] (tap kh = h + PH - oh*SH): at most ceil(KH/SH) of them, no modulo.
      const int ohs = (h + PH < KH) ? 0 : fast_div(h + PH - KH, dSH) + 1;
      const int ohe = min(fast_div(h + PH, dSH) + 1, OH);
      const int ows = (w + PW < KW) ? 0 : fast_div(w + PW - KW, dSW) + 1;
      const int owe = min(fast_div(w + PW, dSW) + 1, OW);
      for (int oh = ohs; oh < ohe; ++oh) {
        const int kh = h + PH - oh * SH;
        for (int ow = ows; ow < owe; ++ow) {
          const int kw = w + PW - ow * SW;
          acc += cp[(kh * KW + kw) * row + oh * OW + ow];
        }
      }
      x[i] = acc;
      continue;
    }
    for (int kh = 0; kh < KH; ++kh) {
      const int th = h + PH - kh * DH;  // = oh*SH if this tap row reaches h
      if (th < 0) continue;
      const int oh = fast_div(th, dSH);
      if (oh * SH != th || oh >= OH) continue;
      for (int kw = 0; kw < KW; ++kw) {
        const int tw = w + PW - kw * DW;
        if (tw < 0) continue;
        const int ow = fast_div(tw, dSW);
        if (ow * SW != tw || ow >= OW) continue;
        acc += cp[(kh * KW + kw) * row + oh * OW + ow];
      }
    }
    x[i] = acc;
  }
}

extern "C" __global__ void im2col_f32(
    const float* __restrict__ x, float* __restrict__ col, int N, int C, int H, int W,
    int KH, int KW, int SH, int SW, int PH, int PW, int DH, int DW, int OH, int OW,
    int img, int row, unsigned long long dOW, unsigned long long dOH,
    unsigned long long dC) {
  im2col_impl<float>(x, col, N, C, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW,
                 img, row, dOW, dOH, dC);
}

extern "C" __global__ void im2col_f64(
    const double* __restrict__ x, double* __restrict__ col, int N, int C, int H, int W,
    int KH, int KW, int SH, int SW, int PH, int PW, int DH, int DW, int OH, int OW,
    int img, int row, unsigned long long dOW, unsigned long long dOH,
    unsigned long long dC) {
  im2col_impl<double>(x, col, N, C, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW,
                 img, row, dOW, dOH, dC);
}

extern "C" __global__ void col2im_f32(
    const float* __restrict__ col, float* __restrict__ x, int N, int C, int H, int W,
    int KH, int KW, int SH, int SW, int PH, int PW, int DH, int DW, int OH, int OW,
    int img, int row, unsigned long long dW, unsigned long long dH,
    unsigned long long dC, unsigned long long dSH, unsigned long long dSW) {
  col2im_impl<float>(col, x, N, C, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW,
                 img, row, dW, dH, dC, dSH, dSW);
}

extern "C" __global__ void col2im_f64(
    const double* __restrict__ col, double* __restrict__ x, int N, int C, int H, int W,
    int KH, int KW, int SH, int SW, int PH, int PW, int DH, int DW, int OH, int OW,
    int img, int row, unsigned long long dW, unsigned long long dH,
    unsigned long long dC, unsigned long long dSH, unsigned long long dSW) {
  col2im_impl<double>(col, x, N, C, H, W, KH, KW, SH, SW, PH, PW, DH, DW, OH, OW,
                 img, row, dW, dH, dC, dSH, dSW);
}
