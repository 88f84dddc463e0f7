// The inference kernels of the Phased LSTM recurrence (no gradient, nothing saved), a fragment
// of the `phased_lstm` library that train.cpp defines.
//
//   forward_infer        the recurrence from the input projections `gates_x` and the gate `k`
//                        of every step (the signature of phased_lstm.ops.recurrence);
//   forward_infer_input  one layer-direction from its input `x` and timestamps: the gate and the
//                        input projection are computed inside, for the open neurons only.
//
// A (sample, neuron) pair whose time gate is closed (k == 0: evaluation, where the leak is 0,
// or padding) is not computed at all: no row of W_ih or W_hh is read, no nonlinearity
// evaluated, and its h and c are kept bit for bit. A step is run one of three ways, from its
// share of open pairs (known before the step: the gate does not depend on the state):
//   none open   a copy of h;
//   sparse      each open pair as dot products with its neuron's four rows of W_hh (and of
//               W_ih); the neurons are split among threads (layout.h, Blocks), each thread
//               reading its neurons' rows once for all the samples open there;
//   dense       above `dense_above`, where one matrix product, which reuses every row of W_hh
//               for every sample, costs less.
// The layouts of the steps (padded, packed) are described in layout.h.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "gate_math.h"
#include "layout.h"
#include "lstm_math.h"

namespace {

using namespace phased_lstm;

// Where the input part of a pre-activation comes from, for the rows of one step: the rows of
// gates_x (rows, 4H), or x (rows, I) with W_ih (4H, I) and the summed bias (4H,) or null.
template <typename T>
struct StepInput {
  const T* gx = nullptr;
  const T* x = nullptr;
  const T* w_ih = nullptr;
  const T* bias = nullptr;
  int64_t I = 0;

  // The input parts (i, f, g, o) of neuron j for the step's row n.
  void pre(int64_t n, int64_t j, int64_t H, T* out) const {
    if (gx != nullptr) {
      const T* row = gx + n * 4 * H;
      for (int64_t q = 0; q < 4; ++q) out[q] = row[q * H + j];
      return;
    }
    dot4(w_ih, H, I, j, x + n * I, out);
    if (bias != nullptr) {
      for (int64_t q = 0; q < 4; ++q) out[q] = bias[q * H + j] + out[q];
    }
  }
};

// Sparse steps of at most this many rows run their blocks in a plain OpenMP region (see
// for_each_block_plain): a step of one sample at H=512 takes ~9 us, of which the thread-local
// state of an ATen region took ~1 us. For a batch of 32 the plain region measured slower
// (batch-eval 287 -> 365 ms at 2 threads), for reasons not found: there ATen's region stays.
constexpr int64_t kPlainRows = 4;

// What a step of inference reads and writes besides its input: the recurrent weights, and the
// blocks its sparse steps split the neurons into when they have enough work for threads.
template <typename T>
struct Infer {
  int64_t H = 0, I = 0;
  const T* w_hh = nullptr;
  const T* w_ch = nullptr;
  Blocks one, split;

  // Sparse step over `rows` rows: h_t of every pair is h_prev's, then each open pair (k != 0)
  // is updated in place (its c is read and written only by itself; h is read from h_prev).
  void sparse(int64_t rows, int64_t pairs, const T* k, const T* hp, T* ht, T* c,
              const StepInput<T>& input) const {
    // A block of work per thread only when the pairs' dot products are worth a region.
    const Blocks& blocks = pairs * 4 * (I + H) >= (int64_t{1} << 15) ? split : one;
    const auto body = [&](int64_t p) {
      const int64_t j0 = blocks.begin[p], j1 = blocks.begin[p + 1];
      for (int64_t n = 0; n < rows; ++n) {
        std::memcpy(ht + n * H + j0, hp + n * H + j0, sizeof(T) * (j1 - j0));
      }
      T pre[4], rec[4];
      // Whether any sample of the step is open at neuron j.
      const auto open_at = [&](int64_t j) {
        for (int64_t n = 0; n < rows; ++n) {
          if (k[n * H + j] != T(0)) return true;
        }
        return false;
      };
      // Neuron by neuron, so that its rows of the weights are read from memory once and from
      // the cache for every further sample open there; the next open neuron's rows are asked
      // for as this one starts.
      int64_t j = j0;
      while (j < j1 && !open_at(j)) ++j;
      while (j < j1) {
        int64_t next = j + 1;
        while (next < j1 && !open_at(next)) ++next;
        bool first = next < j1;  // the first sample open here fetches the next neuron's rows
        for (int64_t n = 0; n < rows; ++n) {
          const T kv = k[n * H + j];
          if (kv == T(0)) continue;
          input.pre(n, j, H, pre);
          if (first) {
            dot4_fetching(w_hh, H, H, j, next, hp + n * H, rec);
            first = false;
          } else {
            dot4(w_hh, H, H, j, hp + n * H, rec);
          }
          for (int64_t q = 0; q < 4; ++q) pre[q] = pre[q] + rec[q];
          update_one(pre, w_ch, H, j, kv, c[n * H + j], ht[n * H + j]);
        }
        j = next;
      }
    };
    if (rows <= kPlainRows) {
      for_each_block_plain(blocks, body);
    } else {
      for_each_block(blocks, body);
    }
  }

  // Dense step over `rows` rows from the pre-activations' two parts, gx (rows, 4H) and rec
  // (rows, 4H); reads c_prev, writes c_next (distinct buffers).
  void dense(int64_t rows, const T* gx, const T* rec, const T* k, const T* hp, T* ht,
             const T* c_prev, T* c_next) const {
    const int64_t H4 = 4 * H;
    at::parallel_for(0, rows, row_grain(H), [&](int64_t begin, int64_t end) {
      FlushSubnormals flush_here;
      for (int64_t n = begin; n < end; ++n) {
        const auto run = w_ch != nullptr ? forward_cols<T, true, kNoActs, false>
                                         : forward_cols<T, false, kNoActs, false>;
        run(gx + n * H4, H, nullptr, rec + n * H4, H, nullptr, 0, c_prev + n * H, hp + n * H,
            k + n * H, w_ch, H, c_next + n * H, ht + n * H, H);
      }
    });
  }
};

template <typename T>
Infer<T> make_infer(const at::Tensor& weight_hh, const std::optional<at::Tensor>& weight_ch,
                    int64_t H, int64_t I) {
  Infer<T> infer;
  infer.H = H;
  infer.I = I;
  infer.w_hh = weight_hh.data_ptr<T>();
  infer.w_ch = weight_ch.has_value() ? weight_ch->data_ptr<T>() : nullptr;
  infer.one = neuron_blocks(H, 0, 1);
  infer.split = neuron_blocks(H, int64_t{1} << 30, at::get_num_threads());
  return infer;
}

// Whether a step with `pairs` open pairs of `rows * H` runs dense.
bool run_dense(int64_t pairs, int64_t rows, int64_t H, double dense_above) {
  return static_cast<double>(pairs) > dense_above * static_cast<double>(rows * H);
}

// Open pairs of the rows [0, rows) of a step's k.
template <typename T>
int64_t count_open(const T* k, int64_t count) {
  int64_t open = 0;
  for (int64_t i = 0; i < count; ++i) open += k[i] != T(0);
  return open;
}

// `dense_above`: a step whose share of open (sample, neuron) pairs exceeds it runs as one
// dense matrix product; below it only the open pairs are computed. Steps with no open pair
// are a copy either way. Padding must come with k = 0 (it is then held, as any closed neuron).
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_infer(
    const at::Tensor& gates_x, const at::Tensor& k, const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& weight_ch, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& batch_sizes, double dense_above) {
  NoAutocast no_autocast(autocast_keys());
  FlushSubnormals flush;
  const Layout layout = make_layout(gates_x, h0, batch_sizes, "gates_x");
  check_inputs(layout, gates_x, k, weight_hh, weight_ch, h0, c0);
  const int64_t L = layout.L, N = layout.N, H = layout.H;
  at::Tensor h = empty_buffer(k.sizes(), h0.options());
  // Two cell-state buffers: a dense step reads one and writes the other.
  at::Tensor c_a = c0.clone();
  at::Tensor c_b = at::empty_like(c0);
  at::Tensor rec = at::empty({N, 4 * H}, gates_x.options());
  const at::Tensor w_t = weight_hh.t();
  AT_DISPATCH_FLOATING_TYPES(gates_x.scalar_type(), "phased_lstm_forward_infer", [&] {
    using T = scalar_t;
    const Infer<T> infer = make_infer<T>(weight_hh, weight_ch, H, 0);
    const T* gx_p = gates_x.data_ptr<T>();
    const T* k_p = k.data_ptr<T>();
    T* h_p = h.data_ptr<T>();
    at::Tensor* c_cur = &c_a;
    at::Tensor* c_next = &c_b;
    for (int64_t t = 0; t < L; ++t) {
      const int64_t rows = layout.stored(t);
      const int64_t base = layout.offset[t];
      const T* kt = k_p + base * H;
      const at::Tensor h_prev = t == 0 ? h0 : step_rows(h, layout, t - 1);
      const T* hp = h_prev.data_ptr<T>();
      T* ht = h_p + base * H;
      const int64_t pairs = count_open(kt, rows * H);
      if (pairs == 0) {
        std::memcpy(ht, hp, sizeof(T) * rows * H);
        continue;
      }
      StepInput<T> input;
      input.gx = gx_p + base * 4 * H;
      if (!run_dense(pairs, rows, H, dense_above)) {
        infer.sparse(rows, pairs, kt, hp, ht, c_cur->data_ptr<T>(), input);
        continue;
      }
      at::Tensor rec_t = rec.narrow(0, 0, rows);
      at::mm_out(rec_t, h_prev.narrow(0, 0, rows), w_t);
      T* c_p = c_cur->data_ptr<T>();
      T* c_out = c_next->data_ptr<T>();
      // Samples past their last step (packed) keep their cell state in the other buffer.
      if (rows < N) std::memcpy(c_out + rows * H, c_p + rows * H, sizeof(T) * (N - rows) * H);
      infer.dense(rows, input.gx, rec.data_ptr<T>(), kt, hp, ht, c_p, c_out);
      std::swap(c_cur, c_next);
    }
    if (c_cur != &c_a) std::swap(c_a, c_b);
  });
  return {h, gather_last(h, h0, layout), c_a};
}

// Steps per pass of the gate: its values for that many steps' rows, about 1 MiB of float32.
int64_t gate_chunk_rows(int64_t H) { return std::max<int64_t>(1, (int64_t{1} << 18) / H); }

// One layer-direction without gradients from its input: x (L, N, I) or packed (S, I) with
// timestamps (L, N) or (S,) in float64; the gate's period, shift and r_on (H,) in float64;
// `valid` (L, N) bool (padded layout) or none. Returns (h, h_n, c_n) as forward_infer does,
// and computes what forward_infer's caller would have: k exactly as the sequence gate does
// (time_gate.cpp; zero where `valid` is false or past batch_sizes), and the input projection
// x W_ih^T + bias of the open pairs only.
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_infer_input(
    const at::Tensor& x, const at::Tensor& times, const at::Tensor& weight_ih,
    const std::optional<at::Tensor>& bias, const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& weight_ch, const at::Tensor& period,
    const at::Tensor& shift, const at::Tensor& r_on, double leak,
    const std::optional<at::Tensor>& valid, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& batch_sizes, double dense_above) {
  NoAutocast no_autocast(autocast_keys());
  FlushSubnormals flush;
  const Layout layout = make_layout(x, h0, batch_sizes, "x");
  const int64_t L = layout.L, N = layout.N, H = layout.H, I = x.size(-1);
  check_input_projection(layout, x, weight_ih, bias);
  check_recurrent(layout, weight_hh, weight_ch, h0, c0, x.scalar_type(), {x});
  std::vector<int64_t> time_sizes = x.sizes().vec();
  time_sizes.pop_back();
  TORCH_CHECK(times.sizes() == at::IntArrayRef(time_sizes) &&
                  times.scalar_type() == at::kDouble && times.is_contiguous() &&
                  times.device().is_cpu(),
              "times must be contiguous float64 of shape ", at::IntArrayRef(time_sizes),
              " like x without its features, got ", times.sizes(), " ", times.scalar_type());
  for (const auto* p : {&period, &shift, &r_on}) {
    TORCH_CHECK(p->dim() == 1 && p->size(0) == H && p->scalar_type() == at::kDouble &&
                    p->is_contiguous() && p->device().is_cpu(),
                "period, shift and r_on must be contiguous float64 of shape (H,) = (", H,
                ",), got ", p->sizes(), " ", p->scalar_type());
  }
  if (valid.has_value()) {
    TORCH_CHECK(!layout.packed && valid->sizes() == times.sizes() &&
                    valid->scalar_type() == at::kBool && valid->is_contiguous(),
                "valid must be a contiguous bool tensor shaped like times (padded layout), got ",
                valid->sizes(), " ", valid->scalar_type());
  }
  const int64_t stored_total = layout.L == 0 ? 0 : layout.offset[L - 1] + layout.stored(L - 1);
  std::vector<int64_t> out_sizes = x.sizes().vec();
  out_sizes.back() = H;
  at::Tensor h = empty_buffer(out_sizes, h0.options());
  at::Tensor c_a = c0.clone();
  at::Tensor c_b = at::empty_like(c0);
  const int64_t chunk = std::min(gate_chunk_rows(H), std::max<int64_t>(stored_total, 1));
  at::Tensor k = at::empty({chunk + N, H}, x.options());  // a chunk of rows, plus a step's
  std::vector<int64_t> open(static_cast<size_t>(chunk + N));
  at::Tensor gx = at::empty({N, 4 * H}, x.options());
  at::Tensor rec = at::empty({N, 4 * H}, x.options());
  const at::Tensor w_ih_t = weight_ih.t();
  const at::Tensor w_hh_t = weight_hh.t();
  std::vector<double> inv_period(static_cast<size_t>(H));
  const double* period_p = period.data_ptr<double>();
  const double* shift_p = shift.data_ptr<double>();
  const double* r_on_p = r_on.data_ptr<double>();
  for (int64_t j = 0; j < H; ++j) inv_period[j] = 1.0 / period_p[j];
  const double* times_p = times.data_ptr<double>();
  const bool* valid_p = valid.has_value() ? valid->data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "phased_lstm_forward_infer_input", [&] {
    using T = scalar_t;
    const Infer<T> infer = make_infer<T>(weight_hh, weight_ch, H, I);
    const T* x_p = x.data_ptr<T>();
    T* h_p = h.data_ptr<T>();
    T* k_p = k.data_ptr<T>();
    at::Tensor* c_cur = &c_a;
    at::Tensor* c_next = &c_b;
    int64_t first = 0;  // the stored row at the start of k
    int64_t last = 0;   // and past its end
    for (int64_t t = 0; t < L; ++t) {
      const int64_t rows = layout.stored(t);
      const int64_t base = layout.offset[t];
      if (base + rows > last) {
        // The gate of the next rows, from this step on: whole steps, at least this one.
        first = base;
        last = base;
        for (int64_t s = t; s < L && (last == base || last + layout.stored(s) <= base + chunk);
             ++s) {
          last += layout.stored(s);
        }
        TORCH_CHECK(last - first <= chunk + N, "forward_infer_input: gate chunk overflow");
        // The step of each stored row and its sample, to find its validity.
        at::parallel_for(first, last, std::max<int64_t>(1, 4096 / H), [&](int64_t b, int64_t e) {
          FlushSubnormals flush_here;
          int64_t s = t;
          while (layout.offset[s] + layout.stored(s) <= b) ++s;
          for (int64_t r = b; r < e; ++r) {
            while (layout.offset[s] + layout.stored(s) <= r) ++s;
            const int64_t n = r - layout.offset[s];
            T* out = k_p + (r - first) * H;
            const bool ok = n < layout.rows[s] && (valid_p == nullptr || valid_p[s * N + n]);
            int64_t count = 0;
            if (ok) {
              const double time = times_p[r];
              for (int64_t j = 0; j < H; ++j) {
                const double phase = gate_phase(time - shift_p[j], period_p[j], inv_period[j]);
                out[j] = static_cast<T>(gate_value(phase, r_on_p[j], leak));
                count += out[j] != T(0);
              }
            } else {
              std::fill_n(out, H, T(0));
            }
            open[r - first] = count;
          }
        });
      }
      const T* kt = k_p + (base - first) * H;
      int64_t pairs = 0;
      for (int64_t n = 0; n < rows; ++n) pairs += open[base - first + n];
      const at::Tensor h_prev = t == 0 ? h0 : step_rows(h, layout, t - 1);
      const T* hp = h_prev.data_ptr<T>();
      T* ht = h_p + base * H;
      if (pairs == 0) {
        std::memcpy(ht, hp, sizeof(T) * rows * H);
        continue;
      }
      if (!run_dense(pairs, rows, H, dense_above)) {
        StepInput<T> input;
        input.x = x_p + base * I;
        input.w_ih = weight_ih.data_ptr<T>();
        input.bias = bias.has_value() ? bias->data_ptr<T>() : nullptr;
        input.I = I;
        infer.sparse(rows, pairs, kt, hp, ht, c_cur->data_ptr<T>(), input);
        continue;
      }
      const at::Tensor x_t = step_rows(x, layout, t);
      at::Tensor gx_t = gx.narrow(0, 0, rows);
      if (bias.has_value()) {
        at::addmm_out(gx_t, *bias, x_t, w_ih_t);
      } else {
        at::mm_out(gx_t, x_t, w_ih_t);
      }
      at::Tensor rec_t = rec.narrow(0, 0, rows);
      at::mm_out(rec_t, h_prev.narrow(0, 0, rows), w_hh_t);
      T* c_p = c_cur->data_ptr<T>();
      T* c_out = c_next->data_ptr<T>();
      if (rows < N) std::memcpy(c_out + rows * H, c_p + rows * H, sizeof(T) * (N - rows) * H);
      infer.dense(rows, gx.data_ptr<T>(), rec.data_ptr<T>(), kt, hp, ht, c_p, c_out);
      std::swap(c_cur, c_next);
    }
    if (c_cur != &c_a) std::swap(c_a, c_b);
  });
  return {h, gather_last(h, h0, layout), c_a};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(phased_lstm, m) {
  m.def(
      "forward_infer(Tensor gates_x, Tensor k, Tensor weight_hh, Tensor? weight_ch, Tensor h0, "
      "Tensor c0, Tensor? batch_sizes, float dense_above) -> (Tensor, Tensor, Tensor)");
  m.def(
      "forward_infer_input(Tensor x, Tensor times, Tensor weight_ih, Tensor? bias, "
      "Tensor weight_hh, Tensor? weight_ch, Tensor period, Tensor shift, Tensor r_on, "
      "float leak, Tensor? valid, Tensor h0, Tensor c0, Tensor? batch_sizes, "
      "float dense_above) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(phased_lstm, CPU, m) {
  m.impl("forward_infer", &forward_infer);
  m.impl("forward_infer_input", &forward_infer_input);
}
