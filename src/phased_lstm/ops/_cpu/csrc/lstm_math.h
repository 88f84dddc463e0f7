// Elementwise math and per-row helpers of the LSTM, shared by the sequence kernels
// (recurrence.cpp) and the streaming step (stream.cpp): one definition, so that every path
// computes the same expressions in the same order.

#pragma once

#include <ATen/ATen.h>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__SSE__) || defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace phased_lstm {

// ---------------------------------------------------------------------------------------------
// Subnormal floats. Once an LSTM's gates saturate, products such as the gradient through a
// sigmoid near 0 or 1 fall below the smallest normal float (about 1.2e-38), and x86 CPUs compute
// with such numbers, in the matrix products and in the loops here, on a microcode path many
// times slower: a trained N-MNIST-sim LSTM's training batch took 2.3-5.1 s instead of 1.0-1.4 s.
// Inside the kernels they are flushed to zero (the FTZ and DAZ bits of MXCSR), in every thread
// that computes; the caller's mode is restored on return. Elsewhere (ARM) this does nothing.
class FlushSubnormals {
 public:
  FlushSubnormals() {
#if defined(__SSE__) || defined(__x86_64__) || defined(_M_X64)
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ | 0x8040u);  // FTZ (bit 15) | DAZ (bit 6)
#endif
  }
  ~FlushSubnormals() {
#if defined(__SSE__) || defined(__x86_64__) || defined(_M_X64)
    _mm_setcsr(saved_);
#endif
  }
  FlushSubnormals(const FlushSubnormals&) = delete;
  FlushSubnormals& operator=(const FlushSubnormals&) = delete;

 private:
  unsigned int saved_ = 0;
};

#if defined(__GNUC__) || defined(__clang__)
#define PHASED_LSTM_NOINLINE __attribute__((noinline))
#else
#define PHASED_LSTM_NOINLINE
#endif


// ---------------------------------------------------------------------------------------------
// Elementwise math. For float, branch-free versions the compiler can vectorise: calls to the C
// library's expf/tanhf keep a loop scalar, and the transcendental functions then cost more than
// the matrix products. They are accurate to a few ulp. For double the C library is used.

inline float vexp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  // e^x = 2^n e^r with n = round(x / ln 2) and |r| <= ln(2) / 2.
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding then subtracting it rounds
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  // ln 2 = kLn2Hi + kLn2Lo, kLn2Hi with few enough bits that n * kLn2Hi is exact.
  constexpr float kLn2Hi = 0.693145751953125f;
  constexpr float kLn2Lo = 1.428606765330187e-6f;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  // Taylor series of e^r to degree 7: the remainder is below 6e-9 for |r| <= ln(2) / 2.
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-126, 127]
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float vtanh(float x) {
  const float a = std::fabs(x);
  // 1 - 2 / (e^{2a} + 1) cancels near 0, where the Taylor series takes over.
  const float far = 1.0f - 2.0f / (vexp(2.0f * a) + 1.0f);
  const float z = a * a;
  float p = -1382.0f / 155925.0f;
  p = p * z + 62.0f / 2835.0f;
  p = p * z - 17.0f / 315.0f;
  p = p * z + 2.0f / 15.0f;
  p = p * z - 1.0f / 3.0f;
  const float near = a + a * z * p;
  return std::copysign(a < 0.3f ? near : far, x);
}

inline double vexp(double x) { return std::exp(x); }
inline double vtanh(double x) { return std::tanh(x); }

template <typename T>
inline T vsigmoid(T x) {
  return T(1) / (T(1) + vexp(-x));
}

// ---------------------------------------------------------------------------------------------
// One sample's row of one step. `gates` holds the pre-activations (i, f, g, o) on entry,
// x W_ih^T + b + h_prev W_hh^T, and the activations on exit. `w_ch` is (3H,) peepholes.

// Not inlined: compiled on their own, with their restrict pointers intact, the loops vectorise;
// inlined into the parallel lambdas they may not. A call per row costs nothing.
template <typename T, bool kPeep>
PHASED_LSTM_NOINLINE void forward_row(
    T* __restrict__ gates, const T* __restrict__ c_prev, const T* __restrict__ h_prev,
    const T* __restrict__ k, const T* __restrict__ w_ch, T* __restrict__ c, T* __restrict__ h,
    int64_t H) {
  T* __restrict__ gi = gates;
  T* __restrict__ gf = gates + H;
  T* __restrict__ gg = gates + 2 * H;
  T* __restrict__ go = gates + 3 * H;
  for (int64_t j = 0; j < H; ++j) {
    const T cp = c_prev[j];
    T ai = gi[j];
    T af = gf[j];
    if (kPeep) {
      ai = ai + w_ch[j] * cp;
      af = af + w_ch[H + j] * cp;
    }
    const T i = vsigmoid(ai);
    const T f = vsigmoid(af);
    const T g = vtanh(gg[j]);
    const T c_new = f * cp + i * g;
    T ao = go[j];
    if (kPeep) ao = ao + w_ch[2 * H + j] * c_new;
    const T o = vsigmoid(ao);
    const T h_new = o * vtanh(c_new);
    const T kj = k[j];
    c[j] = kj * c_new + (T(1) - kj) * cp;
    h[j] = kj * h_new + (T(1) - kj) * h_prev[j];
    gi[j] = i;
    gf[j] = f;
    gg[j] = g;
    go[j] = o;
  }
}

// Backward of one row of one step. On entry `dc` is dL/dc_t; on exit dL/dc_{t-1}. `dh` is
// dL/dh_t; `dh_prev` receives (1 - k) dL/dh_t plus `seed` (the output's gradient at t - 1, or
// null): the caller adds dgates W_hh afterwards. `acc` (3H, double) sums the peephole gradients.
// `clip` bounds the gradient of the gate pre-activations (x W_ih^T + b + h W_hh^T) that goes on
// to gates_x and h_{t-1}, as Lasagne's grad_clipping; the peephole terms are added after that
// point in the forward pass, so they and the cell state see the unclipped gradient. An infinite
// `clip` is the identity (NaN stays NaN).
template <typename T, bool kPeep>
PHASED_LSTM_NOINLINE void backward_row(
    const T* __restrict__ acts, const T* __restrict__ c_prev, const T* __restrict__ h_prev,
    const T* __restrict__ k, const T* __restrict__ w_ch, const T* __restrict__ dh,
    T* __restrict__ dc, const T* __restrict__ seed, T* __restrict__ dh_prev,
    T* __restrict__ dgates, T* __restrict__ dk, double* __restrict__ acc, T clip, int64_t H) {
  const T* __restrict__ gi = acts;
  const T* __restrict__ gf = acts + H;
  const T* __restrict__ gg = acts + 2 * H;
  const T* __restrict__ go = acts + 3 * H;
  T* __restrict__ di = dgates;
  T* __restrict__ df = dgates + H;
  T* __restrict__ dg = dgates + 2 * H;
  T* __restrict__ do_ = dgates + 3 * H;
  for (int64_t j = 0; j < H; ++j) {
    const T i = gi[j], f = gf[j], g = gg[j], o = go[j];
    const T cp = c_prev[j];
    const T c_new = f * cp + i * g;  // recomputed rather than stored: same expression as forward
    const T tc = vtanh(c_new);
    const T h_new = o * tc;
    const T kj = k[j], dhj = dh[j], dcj = dc[j];
    dk[j] = dhj * (h_new - h_prev[j]) + dcj * (c_new - cp);
    const T dh_new = kj * dhj;
    const T dao = dh_new * tc * o * (T(1) - o);
    T dc_new = kj * dcj + dh_new * o * (T(1) - tc * tc);
    if (kPeep) dc_new = dc_new + dao * w_ch[2 * H + j];
    const T dai = dc_new * g * i * (T(1) - i);
    const T daf = dc_new * cp * f * (T(1) - f);
    const T dag = dc_new * i * (T(1) - g * g);
    T dcp = (T(1) - kj) * dcj + dc_new * f;
    if (kPeep) {
      dcp = dcp + dai * w_ch[j] + daf * w_ch[H + j];
      acc[j] += static_cast<double>(dai) * static_cast<double>(cp);
      acc[H + j] += static_cast<double>(daf) * static_cast<double>(cp);
      acc[2 * H + j] += static_cast<double>(dao) * static_cast<double>(c_new);
    }
    dc[j] = dcp;
    dh_prev[j] = (T(1) - kj) * dhj + (seed != nullptr ? seed[j] : T(0));
    di[j] = std::min(std::max(dai, -clip), clip);
    df[j] = std::min(std::max(daf, -clip), clip);
    dg[j] = std::min(std::max(dag, -clip), clip);
    do_[j] = std::min(std::max(dao, -clip), clip);
  }
}

// The update of a single open neuron, for the sparse steps of inference: `pre` holds its four
// pre-activations (without peepholes).
template <typename T>
inline void update_one(const T* pre, const T* w_ch, int64_t H, int64_t j, T k, T& c, T& h) {
  const T cp = c;
  T ai = pre[0], af = pre[1], ao = pre[3];
  if (w_ch != nullptr) {
    ai = ai + w_ch[j] * cp;
    af = af + w_ch[H + j] * cp;
  }
  const T i = vsigmoid(ai);
  const T f = vsigmoid(af);
  const T g = vtanh(pre[2]);
  const T c_new = f * cp + i * g;
  if (w_ch != nullptr) ao = ao + w_ch[2 * H + j] * c_new;
  const T o = vsigmoid(ao);
  const T h_new = o * vtanh(c_new);
  c = k * c_new + (T(1) - k) * cp;
  h = k * h_new + (T(1) - k) * h;
}

// The four rows (i, f, g, o) of neuron j of a (4H, n) row-major matrix `w` dotted with the
// vector `v` of length n (W_hh and h, or W_ih and x).
template <typename T>
inline void dot4(const T* __restrict__ w, int64_t H, int64_t n, int64_t j,
                 const T* __restrict__ v, T* __restrict__ out) {
  const T* __restrict__ w0 = w + j * n;
  const T* __restrict__ w1 = w + (H + j) * n;
  const T* __restrict__ w2 = w + (2 * H + j) * n;
  const T* __restrict__ w3 = w + (3 * H + j) * n;
  T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
  for (int64_t m = 0; m < n; ++m) {
    const T x = v[m];
    a0 += w0[m] * x;
    a1 += w1[m] * x;
    a2 += w2[m] * x;
    a3 += w3[m] * x;
  }
  out[0] = a0;
  out[1] = a1;
  out[2] = a2;
  out[3] = a3;
}

// A new tensor for one of the large per-sequence buffers (activations, states, gradients).
// Fresh memory costs a page fault per 4 KiB page on first touch, which on some machines (VMs in
// particular) costs more than the elementwise work on it; on Linux these buffers ask for
// transparent huge pages, a fault per 2 MiB. Where the kernel declines, nothing changes.
inline at::Tensor empty_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
#ifdef __linux__
  constexpr size_t kHugePage = size_t{2} << 20;
  size_t bytes = c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  for (const int64_t size : sizes) bytes *= static_cast<size_t>(size);
  if (bytes >= 2 * kHugePage) {
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* data = nullptr;
    if (posix_memalign(&data, kHugePage, rounded) == 0) {
      madvise(data, rounded, MADV_HUGEPAGE);
      return at::from_blob(data, sizes, [](void* p) { std::free(p); }, options);
    }
  }
#endif
  return at::empty(sizes, options);
}

// Rows per parallel chunk of an elementwise pass: below ~1k elements (a few microseconds of
// work) a parallel region costs more than it saves.
inline int64_t row_grain(int64_t H) {
  return std::max<int64_t>(1, 1024 / std::max<int64_t>(H, 1));
}

}  // namespace phased_lstm
