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
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
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
#define PHASED_LSTM_INLINE inline __attribute__((always_inline))
#else
#define PHASED_LSTM_NOINLINE
#define PHASED_LSTM_INLINE inline
#endif

// Before a loop whose iterations are independent although it reads and writes several rows of
// one buffer at runtime strides (acts, dgates): without it GCC proves that with runtime checks,
// and past its limit of ten checks it leaves the whole loop scalar.
#if defined(__clang__)
#define PHASED_LSTM_INDEPENDENT _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define PHASED_LSTM_INDEPENDENT _Pragma("GCC ivdep")
#else
#define PHASED_LSTM_INDEPENDENT
#endif


// ---------------------------------------------------------------------------------------------
// Elementwise math. For float, branch-free versions the compiler can vectorise: calls to the C
// library's expf/tanhf keep a loop scalar, and the transcendental functions then cost more than
// the matrix products. They are accurate to a few ulp. For double the C library is used.

// Always inlined: a call per element costs as much as the function in the scalar loops.
PHASED_LSTM_INLINE float vexp(float x) {
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

PHASED_LSTM_INLINE float vtanh(float x) {
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
PHASED_LSTM_INLINE T vsigmoid(T x) {
  return T(1) / (T(1) + vexp(-x));
}

// ---------------------------------------------------------------------------------------------
// The LSTM update of one (sample, neuron) pair from its four pre-activations (i, f, g, o),
// x W_ih^T + b + h_prev W_hh^T, without peepholes: the one definition every path inlines.
// `wci`, `wcf`, `wco` are the neuron's peepholes (read only with kPeep).
template <typename T, bool kPeep>
PHASED_LSTM_INLINE void cell_forward(T ai, T af, T ag, T ao, T cp, T hp, T kj, T wci, T wcf, T wco, T& i,
                         T& f, T& g, T& o, T& c, T& h) {
  if (kPeep) {
    ai = ai + wci * cp;
    af = af + wcf * cp;
  }
  i = vsigmoid(ai);
  f = vsigmoid(af);
  g = vtanh(ag);
  const T c_new = f * cp + i * g;
  if (kPeep) ao = ao + wco * c_new;
  o = vsigmoid(ao);
  const T h_new = o * vtanh(c_new);
  c = kj * c_new + (T(1) - kj) * cp;
  h = kj * h_new + (T(1) - kj) * hp;
}

// What forward_cols does with the activations (i, f, g, o): nothing (inference), write them to
// `acts`, or read the input parts from `acts` and overwrite them there (the buffer the input
// projection of all steps was written into).
enum Acts { kNoActs = 0, kActsOut = 1, kActsInPlace = 2 };

// Forward of `count` neurons of one sample's row. Their pre-activations are the sum of three
// parts: the input part (x W_ih^T, or x W_ih^T + b; gate q of neuron j at gx[q * gx_stride + j],
// or with kActsInPlace at acts[q * acts_stride + j]), with kBias `bias` (b, gates H apart), and
// `rec` (h_prev W_hh^T, gates `rec_stride` apart). `w_ch` points at the peepholes of the first
// neuron, (3H,) with gates `H` apart.
// Not inlined: compiled on their own, with their restrict pointers intact, the loops vectorise;
// inlined into the parallel lambdas they may not. A call per row costs nothing. (Every pointer
// must stay restrict: with a pair that may alias, the compiler gives up vectorising.)
template <typename T, bool kPeep, int kActs, bool kBias>
PHASED_LSTM_NOINLINE void forward_cols(
    const T* __restrict__ gx, int64_t gx_stride, const T* __restrict__ bias,
    const T* __restrict__ rec, int64_t rec_stride, T* __restrict__ acts, int64_t acts_stride,
    const T* __restrict__ c_prev, const T* __restrict__ h_prev, const T* __restrict__ k,
    const T* __restrict__ w_ch, int64_t H, T* __restrict__ c, T* __restrict__ h,
    int64_t count) {
  for (int64_t j = 0; j < count; ++j) {
    T pre[4];
    for (int q = 0; q < 4; ++q) {
      T input = kActs == kActsInPlace ? acts[q * acts_stride + j] : gx[q * gx_stride + j];
      if (kBias) input = input + bias[q * H + j];
      pre[q] = input + rec[q * rec_stride + j];
    }
    T i, f, g, o;
    const T wci = kPeep ? w_ch[j] : T(0);
    const T wcf = kPeep ? w_ch[H + j] : T(0);
    const T wco = kPeep ? w_ch[2 * H + j] : T(0);
    cell_forward<T, kPeep>(pre[0], pre[1], pre[2], pre[3], c_prev[j], h_prev[j], k[j], wci, wcf,
                           wco, i, f, g, o, c[j], h[j]);
    if (kActs != kNoActs) {
      acts[j] = i;
      acts[acts_stride + j] = f;
      acts[2 * acts_stride + j] = g;
      acts[3 * acts_stride + j] = o;
    }
  }
}

// Backward of `count` neurons of one sample's row. On entry `dc` is dL/dc_t; on exit
// dL/dc_{t-1}. `dh` is dL/dh_t; `dh_prev` receives (1 - k) dL/dh_t plus `seed` (the output's
// gradient at t - 1, or null): the caller adds dgates W_hh afterwards. The gradients of the
// pre-activations go to `dgates` (gates `dg_stride` apart) and with kCopy also to `dg_copy`
// (gates `copy_stride` apart: the caller's matrix product reads them from there). `acc` (3H,
// double, gates H apart) sums the peephole gradients.
// `clip` bounds the gradient of the gate pre-activations (x W_ih^T + b + h W_hh^T) that goes on
// to gates_x and h_{t-1}, as Lasagne's grad_clipping; the peephole terms are added after that
// point in the forward pass, so they and the cell state see the unclipped gradient. An infinite
// `clip` is the identity (NaN stays NaN).
template <typename T, bool kPeep, bool kCopy>
PHASED_LSTM_NOINLINE void backward_cols(
    const T* __restrict__ acts, int64_t acts_stride, const T* __restrict__ c_prev,
    const T* __restrict__ h_prev, const T* __restrict__ k, const T* __restrict__ w_ch, int64_t H,
    const T* __restrict__ dh, T* __restrict__ dc, const T* __restrict__ seed,
    T* __restrict__ dh_prev, T* __restrict__ dgates, int64_t dg_stride, T* __restrict__ dg_copy,
    int64_t copy_stride, T* __restrict__ dk, double* __restrict__ acc, T clip, int64_t count) {
  PHASED_LSTM_INDEPENDENT
  for (int64_t j = 0; j < count; ++j) {
    const T i = acts[j], f = acts[acts_stride + j], g = acts[2 * acts_stride + j],
            o = acts[3 * acts_stride + j];
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
    const T di = std::min(std::max(dai, -clip), clip);
    const T df = std::min(std::max(daf, -clip), clip);
    const T dg = std::min(std::max(dag, -clip), clip);
    const T do_ = std::min(std::max(dao, -clip), clip);
    dgates[j] = di;
    dgates[dg_stride + j] = df;
    dgates[2 * dg_stride + j] = dg;
    dgates[3 * dg_stride + j] = do_;
    if (kCopy) {
      dg_copy[j] = di;
      dg_copy[copy_stride + j] = df;
      dg_copy[2 * copy_stride + j] = dg;
      dg_copy[3 * copy_stride + j] = do_;
    }
  }
}

// The update of a single open neuron, for the sparse steps of inference: `pre` holds its four
// pre-activations (without peepholes); `h` holds h_prev on entry.
template <typename T>
inline void update_one(const T* pre, const T* w_ch, int64_t H, int64_t j, T k, T& c, T& h) {
  T i, f, g, o;
  if (w_ch != nullptr) {
    cell_forward<T, true>(pre[0], pre[1], pre[2], pre[3], c, h, k, w_ch[j], w_ch[H + j],
                          w_ch[2 * H + j], i, f, g, o, c, h);
  } else {
    cell_forward<T, false>(pre[0], pre[1], pre[2], pre[3], c, h, k, T(0), T(0), T(0), i, f, g,
                           o, c, h);
  }
}

// Where the four rows (i, f, g, o) of neuron j start in a (4H, n) row-major matrix `w`.
template <typename T>
inline void neuron_rows(const T* w, int64_t H, int64_t n, int64_t j, const T* rows[4]) {
  for (int64_t q = 0; q < 4; ++q) rows[q] = w + (q * H + j) * n;
}

// The four rows of neuron j of a (4H, n) row-major matrix `w` dotted with the vector `v` of
// length n (W_hh and h, or W_ih and x).
template <typename T>
inline void dot4(const T* __restrict__ w, int64_t H, int64_t n, int64_t j,
                 const T* __restrict__ v, T* __restrict__ out) {
  const T* rows[4];
  neuron_rows(w, H, n, j, rows);
  const T* __restrict__ w0 = rows[0];
  const T* __restrict__ w1 = rows[1];
  const T* __restrict__ w2 = rows[2];
  const T* __restrict__ w3 = rows[3];
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

#if defined(__AVX2__) && defined(__FMA__)
// float with AVX2: two accumulators per row. With one, each row is a chain of dependent
// multiply-adds, and the four chains wait on the FMA latency (4-5 cycles) instead of using
// the two FMA units every cycle: the sparse steps of a batch spent most of their time there.
// The AVX2 body of dot4<float>; with `next` (four rows of another neuron), one cache line of
// each of those rows is asked for per 16 columns, so that the next neuron's weights arrive while
// this one is computed.
inline void dot4_avx2(const float* const* rows, int64_t n, const float* __restrict__ v,
                      float* __restrict__ out, const float* const* next) {
  __m256 a[4], b[4];
  for (int q = 0; q < 4; ++q) a[q] = b[q] = _mm256_setzero_ps();
  int64_t m = 0;
  for (; m + 16 <= n; m += 16) {
    if (next != nullptr) {
      for (int q = 0; q < 4; ++q) _mm_prefetch(reinterpret_cast<const char*>(next[q] + m), _MM_HINT_T0);
    }
    const __m256 x0 = _mm256_loadu_ps(v + m);
    const __m256 x1 = _mm256_loadu_ps(v + m + 8);
    for (int q = 0; q < 4; ++q) {
      a[q] = _mm256_fmadd_ps(_mm256_loadu_ps(rows[q] + m), x0, a[q]);
      b[q] = _mm256_fmadd_ps(_mm256_loadu_ps(rows[q] + m + 8), x1, b[q]);
    }
  }
  if (m + 8 <= n) {
    const __m256 x0 = _mm256_loadu_ps(v + m);
    for (int q = 0; q < 4; ++q) a[q] = _mm256_fmadd_ps(_mm256_loadu_ps(rows[q] + m), x0, a[q]);
    m += 8;
  }
  // The four sums at once: pairwise horizontal adds, then the two 128-bit halves.
  for (int q = 0; q < 4; ++q) a[q] = _mm256_add_ps(a[q], b[q]);
  const __m256 s01 = _mm256_hadd_ps(a[0], a[1]);
  const __m256 s23 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 s = _mm256_hadd_ps(s01, s23);
  __m128 sums = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  alignas(16) float tail[4];
  _mm_store_ps(tail, sums);
  for (; m < n; ++m) {
    for (int q = 0; q < 4; ++q) tail[q] += rows[q][m] * v[m];
  }
  for (int q = 0; q < 4; ++q) out[q] = tail[q];
}

template <>
inline void dot4<float>(const float* __restrict__ w, int64_t H, int64_t n, int64_t j,
                        const float* __restrict__ v, float* __restrict__ out) {
  const float* rows[4];
  neuron_rows(w, H, n, j, rows);
  dot4_avx2(rows, n, v, out, nullptr);
}
#endif

// dot4 of neuron j that also asks the cache for the four rows of neuron `ahead` (as dot4 reads
// them), a line at a time as the columns go by. A sparse step reads a few scattered neurons'
// rows of W_hh, too few for the hardware prefetcher to learn: requested while the neuron before
// is computed, they arrive sooner than when each row starts with a full memory latency.
template <typename T>
inline void dot4_fetching(const T* w, int64_t H, int64_t n, int64_t j, int64_t ahead, const T* v,
                          T* out) {
  dot4(w, H, n, j, v, out);
  const T* next[4];
  neuron_rows(w, H, n, ahead, next);
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t q = 0; q < 4; ++q) {
    for (int64_t m = 0; m < n; m += kLine) __builtin_prefetch(next[q] + m, 0, 3);
  }
}

#if defined(__AVX2__) && defined(__FMA__)
template <>
inline void dot4_fetching<float>(const float* w, int64_t H, int64_t n, int64_t j, int64_t ahead,
                                 const float* v, float* out) {
  const float* rows[4];
  const float* next[4];
  neuron_rows(w, H, n, j, rows);
  neuron_rows(w, H, n, ahead, next);
  dot4_avx2(rows, n, v, out, next);
}
#endif

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
