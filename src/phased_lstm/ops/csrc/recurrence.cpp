// Fused CPU kernels of the Phased LSTM recurrence, compiled on first use by
// phased_lstm/ops/fused.py and registered as torch ops in the namespace `phased_lstm`.
//
//   forward_train  the recurrence, keeping only what backward needs: the gate activations
//                  (i, f, g, o) and the cell state c of every step (h is the output anyway);
//   backward       hand-written BPTT over those, one matrix product per step, the gradient of
//                  W_hh as one large product after the loop;
//   forward_infer  the recurrence keeping nothing; a neuron whose time gate is closed (k == 0)
//                  is not computed at all, and a step where every neuron is closed is a copy.
//
// With `batch_sizes` (L,) (as in a PackedSequence, samples sorted by length, longest first),
// only the first batch_sizes[t] rows of step t are computed; the others are padding: their
// state is copied and their gradients are zero, so a batch of unequal lengths costs its valid
// steps, not its longest sequence times the batch.
//
// The equations are those of phased_lstm/ops/reference.py, in the same order of operations.
// Matrix products go through ATen (MKL on x86); the elementwise work of a step is one loop over
// raw pointers that the compiler vectorises.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#if defined(__GNUC__) || defined(__clang__)
#define PHASED_LSTM_NOINLINE __attribute__((noinline))
#else
#define PHASED_LSTM_NOINLINE
#endif

namespace {

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

// The four rows (i, f, g, o) of neuron j of W_hh dotted with one sample's h.
template <typename T>
inline void dot4(const T* __restrict__ w, int64_t H, int64_t j, const T* __restrict__ h,
                 T* __restrict__ out) {
  const T* __restrict__ w0 = w + j * H;
  const T* __restrict__ w1 = w + (H + j) * H;
  const T* __restrict__ w2 = w + (2 * H + j) * H;
  const T* __restrict__ w3 = w + (3 * H + j) * H;
  T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
  for (int64_t m = 0; m < H; ++m) {
    const T x = h[m];
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
at::Tensor empty_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
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

void check_inputs(const at::Tensor& gates_x, const at::Tensor& k, const at::Tensor& weight_hh,
                  const std::optional<at::Tensor>& weight_ch, const at::Tensor& h0,
                  const at::Tensor& c0) {
  TORCH_CHECK(gates_x.dim() == 3, "gates_x must be (L, N, 4H), got ", gates_x.sizes());
  const int64_t L = gates_x.size(0), N = gates_x.size(1), H = h0.size(-1);
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == N, "h0 must be (N, H) = (", N, ", H), got ",
              h0.sizes());
  TORCH_CHECK(c0.sizes() == h0.sizes(), "c0 must be ", h0.sizes(), " like h0, got ", c0.sizes());
  TORCH_CHECK(gates_x.size(2) == 4 * H, "gates_x must be (L, N, 4H) = (", L, ", ", N, ", ",
              4 * H, "), got ", gates_x.sizes());
  TORCH_CHECK(k.dim() == 3 && k.size(0) == L && k.size(1) == N && k.size(2) == H,
              "k must be (L, N, H) = (", L, ", ", N, ", ", H, "), got ", k.sizes());
  TORCH_CHECK(weight_hh.dim() == 2 && weight_hh.size(0) == 4 * H && weight_hh.size(1) == H,
              "weight_hh must be (4H, H) = (", 4 * H, ", ", H, "), got ", weight_hh.sizes());
  const auto dtype = gates_x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "the fused kernels take float32 or float64, got ", dtype);
  std::vector<at::Tensor> all = {gates_x, k, weight_hh, h0, c0};
  if (weight_ch.has_value()) {
    TORCH_CHECK(weight_ch->dim() == 1 && weight_ch->size(0) == 3 * H,
                "weight_ch must be (3H,) = (", 3 * H, ",), got ", weight_ch->sizes());
    all.push_back(*weight_ch);
  }
  for (const auto& t : all) {
    TORCH_CHECK(t.device().is_cpu(), "the fused kernels run on the CPU, got a tensor on ",
                t.device());
    TORCH_CHECK(t.scalar_type() == dtype, "all inputs must have the dtype of gates_x (", dtype,
                "), got ", t.scalar_type());
    TORCH_CHECK(t.is_contiguous(), "the fused kernels take contiguous tensors");
  }
}

// The number of leading rows to compute at each step: batch_sizes, checked, or N everywhere.
std::vector<int64_t> rows_per_step(const std::optional<at::Tensor>& batch_sizes, int64_t L,
                                   int64_t N) {
  std::vector<int64_t> rows(static_cast<size_t>(L), N);
  if (!batch_sizes.has_value()) return rows;
  const at::Tensor& bs = *batch_sizes;
  TORCH_CHECK(bs.dim() == 1 && bs.size(0) == L && bs.scalar_type() == at::kLong &&
                  bs.device().is_cpu(),
              "batch_sizes must be a CPU int64 tensor of shape (L,) = (", L, ",), got ",
              bs.sizes(), " ", bs.scalar_type());
  const at::Tensor contiguous = bs.contiguous();
  const int64_t* p = contiguous.data_ptr<int64_t>();
  for (int64_t t = 0; t < L; ++t) {
    TORCH_CHECK(p[t] >= 0 && p[t] <= N, "batch_sizes must lie in [0, N] = [0, ", N, "], got ",
                p[t], " at step ", t);
    rows[static_cast<size_t>(t)] = p[t];
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_train(
    const at::Tensor& gates_x, const at::Tensor& k, const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& weight_ch, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& batch_sizes) {
  check_inputs(gates_x, k, weight_hh, weight_ch, h0, c0);
  const int64_t L = gates_x.size(0), N = gates_x.size(1), H = h0.size(1);
  const std::vector<int64_t> rows = rows_per_step(batch_sizes, L, N);
  // Each step's pre-activations are written here, then turned into activations in place; the
  // rows of padding are left unwritten (backward never reads them).
  at::Tensor acts = empty_buffer(gates_x.sizes(), gates_x.options());
  at::Tensor h = empty_buffer({L, N, H}, h0.options());
  at::Tensor c = empty_buffer({L, N, H}, h0.options());
  const at::Tensor w_t = weight_hh.t();
  const bool peep = weight_ch.has_value();
  AT_DISPATCH_FLOATING_TYPES(gates_x.scalar_type(), "phased_lstm_forward_train", [&] {
    const scalar_t* w_ch = peep ? weight_ch->data_ptr<scalar_t>() : nullptr;
    const scalar_t* k_p = k.data_ptr<scalar_t>();
    scalar_t* acts_p = acts.data_ptr<scalar_t>();
    scalar_t* h_p = h.data_ptr<scalar_t>();
    scalar_t* c_p = c.data_ptr<scalar_t>();
    for (int64_t t = 0; t < L; ++t) {
      const at::Tensor h_prev = t == 0 ? h0 : h[t - 1];
      const int64_t active = rows[static_cast<size_t>(t)];
      if (active > 0) {
        at::Tensor acts_t = acts[t].narrow(0, 0, active);
        at::addmm_out(acts_t, gates_x[t].narrow(0, 0, active), h_prev.narrow(0, 0, active), w_t);
      }
      const scalar_t* hp = h_prev.data_ptr<scalar_t>();
      const scalar_t* cp = t == 0 ? c0.data_ptr<scalar_t>() : c_p + (t - 1) * N * H;
      at::parallel_for(0, N, row_grain(H), [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n) {
          const int64_t row = (t * N + n) * H;
          if (n >= active) {  // padding: the state is held
            std::memcpy(h_p + row, hp + n * H, sizeof(scalar_t) * H);
            std::memcpy(c_p + row, cp + n * H, sizeof(scalar_t) * H);
            continue;
          }
          scalar_t* gates = acts_p + (t * N + n) * 4 * H;
          if (peep) {
            forward_row<scalar_t, true>(gates, cp + n * H, hp + n * H, k_p + row, w_ch,
                                        c_p + row, h_p + row, H);
          } else {
            forward_row<scalar_t, false>(gates, cp + n * H, hp + n * H, k_p + row, w_ch,
                                         c_p + row, h_p + row, H);
          }
        }
      });
    }
  });
  return {h, c, acts};
}

// Returns the gradients of (gates_x, k, weight_hh, weight_ch, h0, c0); that of weight_ch is an
// empty tensor without peepholes, and that of weight_hh too when `weight_hh_grad` is false.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_h, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
    const at::Tensor& k, const at::Tensor& weight_hh, const std::optional<at::Tensor>& weight_ch,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& h, const at::Tensor& c,
    const at::Tensor& acts, bool weight_hh_grad, double grad_clip,
    const std::optional<at::Tensor>& batch_sizes) {
  check_inputs(acts, k, weight_hh, weight_ch, h0, c0);
  TORCH_CHECK(grad_clip > 0, "backward: grad_clip must be > 0 (inf for none), got ", grad_clip);
  const int64_t L = acts.size(0), N = acts.size(1), H = h0.size(1);
  const std::vector<int64_t> rows = rows_per_step(batch_sizes, L, N);
  for (const auto* t : {&grad_h, &h, &c}) {
    TORCH_CHECK(t->sizes() == k.sizes() && t->is_contiguous() &&
                    t->scalar_type() == k.scalar_type(),
                "backward: saved states and grad_h must be contiguous (L, N, H) like k");
  }
  for (const auto* t : {&grad_h_n, &grad_c_n}) {
    TORCH_CHECK(t->sizes() == h0.sizes() && t->is_contiguous() &&
                    t->scalar_type() == k.scalar_type(),
                "backward: grad_h_n and grad_c_n must be contiguous (N, H) like h0");
  }
  const bool peep = weight_ch.has_value();
  at::Tensor dgates = empty_buffer(acts.sizes(), acts.options());
  at::Tensor dk = empty_buffer(k.sizes(), k.options());
  at::Tensor dh = grad_h[L - 1] + grad_h_n;
  at::Tensor dh_prev = at::empty_like(dh);
  at::Tensor dc = grad_c_n.clone();
  const int64_t threads = at::get_num_threads();
  // One row of peephole sums per thread, so that no two threads add into the same place.
  at::Tensor acc = at::zeros({peep ? threads : 0, 3 * H}, k.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "phased_lstm_backward", [&] {
    const scalar_t* w_ch = peep ? weight_ch->data_ptr<scalar_t>() : nullptr;
    const scalar_t* k_p = k.data_ptr<scalar_t>();
    const scalar_t* acts_p = acts.data_ptr<scalar_t>();
    const scalar_t* h_p = h.data_ptr<scalar_t>();
    const scalar_t* c_p = c.data_ptr<scalar_t>();
    const scalar_t* gh_p = grad_h.data_ptr<scalar_t>();
    scalar_t* dgates_p = dgates.data_ptr<scalar_t>();
    scalar_t* dk_p = dk.data_ptr<scalar_t>();
    scalar_t* dc_p = dc.data_ptr<scalar_t>();
    double* acc_p = peep ? acc.data_ptr<double>() : nullptr;
    const auto clip = static_cast<scalar_t>(grad_clip);
    for (int64_t t = L - 1; t >= 0; --t) {
      const scalar_t* hp = t == 0 ? h0.data_ptr<scalar_t>() : h_p + (t - 1) * N * H;
      const scalar_t* cp = t == 0 ? c0.data_ptr<scalar_t>() : c_p + (t - 1) * N * H;
      const scalar_t* seed = t == 0 ? nullptr : gh_p + (t - 1) * N * H;
      const scalar_t* dh_p = dh.data_ptr<scalar_t>();
      scalar_t* dhp_p = dh_prev.data_ptr<scalar_t>();
      const int64_t active = rows[static_cast<size_t>(t)];
      at::parallel_for(0, N, row_grain(H), [&](int64_t begin, int64_t end) {
        const int64_t tid = at::get_thread_num();
        TORCH_CHECK(!peep || tid < threads, "phased_lstm backward: unexpected thread id");
        double* acc_t = peep ? acc_p + tid * 3 * H : nullptr;
        for (int64_t n = begin; n < end; ++n) {
          const int64_t row = (t * N + n) * H;
          const int64_t grow = (t * N + n) * 4 * H;
          const scalar_t* seed_n = seed == nullptr ? nullptr : seed + n * H;
          if (n >= active) {  // padding: the gradient passes to the held state unchanged
            std::fill_n(dgates_p + grow, 4 * H, scalar_t(0));
            std::fill_n(dk_p + row, H, scalar_t(0));
            for (int64_t j = 0; j < H; ++j) {
              dhp_p[n * H + j] = dh_p[n * H + j] + (seed_n != nullptr ? seed_n[j] : scalar_t(0));
            }
            continue;
          }
          if (peep) {
            backward_row<scalar_t, true>(acts_p + grow, cp + n * H, hp + n * H, k_p + row, w_ch,
                                         dh_p + n * H, dc_p + n * H, seed_n, dhp_p + n * H,
                                         dgates_p + grow, dk_p + row, acc_t, clip, H);
          } else {
            backward_row<scalar_t, false>(acts_p + grow, cp + n * H, hp + n * H, k_p + row, w_ch,
                                          dh_p + n * H, dc_p + n * H, seed_n, dhp_p + n * H,
                                          dgates_p + grow, dk_p + row, acc_t, clip, H);
          }
        }
      });
      if (active > 0) {
        dh_prev.narrow(0, 0, active).addmm_(dgates[t].narrow(0, 0, active), weight_hh);
      }
      std::swap(dh, dh_prev);
    }
  });
  at::Tensor dweight_hh;
  if (weight_hh_grad) {
    // sum_t dgates_t^T h_{t-1}, as one product over all steps but the first, plus the first.
    dweight_hh = at::mm(dgates.narrow(0, 1, L - 1).reshape({-1, 4 * H}).t(),
                        h.narrow(0, 0, L - 1).reshape({-1, H}));
    dweight_hh.addmm_(dgates[0].t(), h0);
  } else {
    dweight_hh = at::empty({0}, k.options());
  }
  at::Tensor dweight_ch = peep ? acc.sum(0).to(k.scalar_type()) : at::empty({0}, k.options());
  return {dgates, dk, dweight_hh, dweight_ch, dh, dc};
}

// `dense_above`: a step whose share of open (sample, neuron) pairs exceeds it runs as one
// dense matrix product; below it only the open pairs are computed. Steps with no open pair
// are a copy either way.
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_infer(
    const at::Tensor& gates_x, const at::Tensor& k, const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& weight_ch, const at::Tensor& h0, const at::Tensor& c0,
    double dense_above) {
  check_inputs(gates_x, k, weight_hh, weight_ch, h0, c0);
  const int64_t L = gates_x.size(0), N = gates_x.size(1), H = h0.size(1);
  at::Tensor h = empty_buffer({L, N, H}, h0.options());
  // Two cell-state buffers: a dense step reads one and writes the other.
  at::Tensor c_a = c0.clone();
  at::Tensor c_b = at::empty_like(c0);
  at::Tensor gates = at::empty({N, 4 * H}, gates_x.options());
  const at::Tensor w_t = weight_hh.t();
  const bool peep = weight_ch.has_value();
  // Open pairs of a step grouped by neuron: neurons[0..count) are the neurons open for at least
  // one sample; the samples of neurons[q] are samples[start[q] .. start[q + 1]).
  std::vector<int32_t> open_per_neuron(H);
  std::vector<int64_t> neurons(H), start(H + 1), fill(H), samples(N * H, 0);
  AT_DISPATCH_FLOATING_TYPES(gates_x.scalar_type(), "phased_lstm_forward_infer", [&] {
    const scalar_t* w_ch = peep ? weight_ch->data_ptr<scalar_t>() : nullptr;
    const scalar_t* w = weight_hh.data_ptr<scalar_t>();
    const scalar_t* gx_p = gates_x.data_ptr<scalar_t>();
    const scalar_t* k_p = k.data_ptr<scalar_t>();
    scalar_t* h_p = h.data_ptr<scalar_t>();
    scalar_t* gates_p = gates.data_ptr<scalar_t>();
    at::Tensor* c_cur = &c_a;
    at::Tensor* c_next = &c_b;
    for (int64_t t = 0; t < L; ++t) {
      const scalar_t* kt = k_p + t * N * H;
      const scalar_t* hp = t == 0 ? h0.data_ptr<scalar_t>() : h_p + (t - 1) * N * H;
      scalar_t* ht = h_p + t * N * H;
      std::fill(open_per_neuron.begin(), open_per_neuron.end(), 0);
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t j = 0; j < H; ++j) open_per_neuron[j] += kt[n * H + j] != scalar_t(0);
      }
      int64_t pairs = 0, count = 0;
      for (int64_t j = 0; j < H; ++j) {
        if (open_per_neuron[j] == 0) continue;
        neurons[count] = j;
        start[count] = pairs;
        fill[j] = pairs;
        pairs += open_per_neuron[j];
        ++count;
      }
      start[count] = pairs;
      if (pairs == 0) {
        std::memcpy(ht, hp, sizeof(scalar_t) * N * H);
        continue;
      }
      scalar_t* c_p = c_cur->data_ptr<scalar_t>();
      if (static_cast<double>(pairs) > dense_above * static_cast<double>(N * H)) {
        gates.copy_(gates_x[t]);
        gates.addmm_(t == 0 ? h0 : h[t - 1], w_t);
        scalar_t* c_out = c_next->data_ptr<scalar_t>();
        at::parallel_for(0, N, row_grain(H), [&](int64_t begin, int64_t end) {
          for (int64_t n = begin; n < end; ++n) {
            scalar_t* g = gates_p + n * 4 * H;
            const int64_t row = n * H;
            if (peep) {
              forward_row<scalar_t, true>(g, c_p + row, hp + row, kt + row, w_ch, c_out + row,
                                          ht + row, H);
            } else {
              forward_row<scalar_t, false>(g, c_p + row, hp + row, kt + row, w_ch, c_out + row,
                                           ht + row, H);
            }
          }
        });
        std::swap(c_cur, c_next);
        continue;
      }
      // Sparse step: closed neurons keep h and c untouched; each open pair is updated in place
      // (its c is read and written only by itself; h is read from the previous step).
      if (N > 1) {  // with one sample, `samples` holds its index 0 already
        for (int64_t n = 0; n < N; ++n) {
          for (int64_t j = 0; j < H; ++j) {
            if (kt[n * H + j] != scalar_t(0)) samples[fill[j]++] = n;
          }
        }
      }
      std::memcpy(ht, hp, sizeof(scalar_t) * N * H);
      const scalar_t* gxt = gx_p + t * N * 4 * H;
      const int64_t work_per_neuron = std::max<int64_t>(1, 4 * H * pairs / count);
      const int64_t grain = std::max<int64_t>(1, (1 << 14) / work_per_neuron);
      at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
        scalar_t pre[4];
        for (int64_t q = begin; q < end; ++q) {
          const int64_t j = neurons[q];
          for (int64_t s = start[q]; s < start[q + 1]; ++s) {
            const int64_t n = samples[s];
            dot4(w, H, j, hp + n * H, pre);
            const scalar_t* gx = gxt + n * 4 * H;
            for (int64_t gate = 0; gate < 4; ++gate) pre[gate] = gx[gate * H + j] + pre[gate];
            update_one(pre, w_ch, H, j, kt[n * H + j], c_p[n * H + j], ht[n * H + j]);
          }
        }
      });
    }
    if (c_cur != &c_a) std::swap(c_a, c_b);
  });
  at::Tensor h_n = L == 0 ? h0.clone() : h[L - 1].clone();
  return {h, h_n, c_a};
}

}  // namespace

TORCH_LIBRARY(phased_lstm, m) {
  m.def(
      "forward_train(Tensor gates_x, Tensor k, Tensor weight_hh, Tensor? weight_ch, Tensor h0, "
      "Tensor c0, Tensor? batch_sizes) -> (Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor grad_h, Tensor grad_h_n, Tensor grad_c_n, Tensor k, Tensor weight_hh, "
      "Tensor? weight_ch, Tensor h0, Tensor c0, Tensor h, Tensor c, Tensor acts, "
      "bool weight_hh_grad, float grad_clip, Tensor? batch_sizes) -> (Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor)");
  m.def(
      "forward_infer(Tensor gates_x, Tensor k, Tensor weight_hh, Tensor? weight_ch, Tensor h0, "
      "Tensor c0, float dense_above) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(phased_lstm, CPU, m) {
  m.impl("forward_train", &forward_train);
  m.impl("backward", &backward);
  m.impl("forward_infer", &forward_infer);
}
