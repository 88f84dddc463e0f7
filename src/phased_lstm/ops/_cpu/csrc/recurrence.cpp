// Fused CPU kernels of the Phased LSTM recurrence, compiled on first use by
// phased_lstm/ops/build.py and registered as torch ops in the namespace `phased_lstm`.
//
//   forward_train  the recurrence, keeping only what backward needs: the gate activations
//                  (i, f, g, o) and the cell state c of every step (h is the output anyway);
//   backward       hand-written BPTT over those, one matrix product per step, the gradient of
//                  W_hh as one large product after the loop;
//   forward_infer  the recurrence keeping nothing; a neuron whose time gate is closed (k == 0)
//                  is not computed at all, and a step where every neuron is closed is a copy.
//
// Two layouts of the steps:
//   padded  gates_x (L, N, 4H), k and h (L, N, H). With `batch_sizes` (L,) (samples sorted by
//           length, longest first) only the first batch_sizes[t] rows of step t are computed;
//           the others are padding: their state is copied and their gradients are zero.
//   packed  gates_x (S, 4H), k and h (S, H): the data of a PackedSequence, step t holding
//           batch_sizes[t] rows one after the other. Nothing is stored for a sample after its
//           last step; h_n and c_n are each sample's state after its last step.
// Either way a batch of unequal lengths costs its valid steps, not its longest sequence times
// the batch.
//
// The equations are those of phased_lstm/ops/reference.py, in the same order of operations.
// Matrix products go through ATen (MKL on x86); the elementwise work of a step is one loop over
// raw pointers that the compiler vectorises.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "lstm_math.h"

namespace {

using namespace phased_lstm;

// Matrix products inside the kernels run in the kernels' dtype: autocast, if the caller has it
// on, must not turn them into float16/bfloat16 products that no longer fit their outputs.
using NoAutocast = c10::impl::ExcludeDispatchKeyGuard;
const c10::DispatchKeySet kAutocast = c10::DispatchKeySet({c10::DispatchKey::AutocastCPU});

// Where the rows of each step are stored, and how many of them are valid.
struct Layout {
  int64_t L = 0, N = 0, H = 0;
  bool packed = false;
  std::vector<int64_t> rows;    // valid rows of step t (batch_sizes, or N)
  std::vector<int64_t> offset;  // first stored row of step t

  // Rows stored for step t: N when padded (padding included), the valid ones when packed.
  int64_t stored(int64_t t) const { return packed ? rows[t] : N; }
  // The stored row of each sample after its last step (-1: none, the sample has no step).
  std::vector<int64_t> last_rows() const {
    std::vector<int64_t> last(static_cast<size_t>(N), -1);
    for (int64_t t = 0; t < L; ++t) {
      for (int64_t n = 0; n < stored(t); ++n) last[n] = offset[t] + n;
    }
    return last;
  }
};

Layout make_layout(const at::Tensor& gates_x, const at::Tensor& h0,
                   const std::optional<at::Tensor>& batch_sizes) {
  Layout layout;
  layout.H = h0.size(-1);
  layout.N = h0.size(0);
  layout.packed = gates_x.dim() == 2;
  if (layout.packed) {
    TORCH_CHECK(batch_sizes.has_value(),
                "the packed layout (gates_x of shape (S, 4H)) needs batch_sizes");
    layout.L = batch_sizes->size(0);
  } else {
    TORCH_CHECK(gates_x.dim() == 3, "gates_x must be (L, N, 4H) or (S, 4H), got ",
                gates_x.sizes());
    layout.L = gates_x.size(0);
    TORCH_CHECK(gates_x.size(1) == layout.N, "gates_x must be (L, N, 4H) with N = ", layout.N,
                " like h0, got ", gates_x.sizes());
  }
  const int64_t L = layout.L, N = layout.N;
  layout.rows.assign(static_cast<size_t>(L), N);
  if (batch_sizes.has_value()) {
    const at::Tensor& bs = *batch_sizes;
    TORCH_CHECK(bs.dim() == 1 && bs.scalar_type() == at::kLong && bs.device().is_cpu(),
                "batch_sizes must be a CPU int64 tensor of shape (L,), got ", bs.sizes(), " ",
                bs.scalar_type());
    TORCH_CHECK(bs.size(0) == L, "batch_sizes must have shape (L,) = (", L, ",), got ",
                bs.sizes());
    const at::Tensor contiguous = bs.contiguous();
    const int64_t* p = contiguous.data_ptr<int64_t>();
    for (int64_t t = 0; t < L; ++t) {
      TORCH_CHECK(p[t] >= 0 && p[t] <= N, "batch_sizes must lie in [0, N] = [0, ", N,
                  "], got ", p[t], " at step ", t);
      TORCH_CHECK(t == 0 || p[t] <= p[t - 1], "batch_sizes must not increase, got ", p[t],
                  " after ", p[t - 1], " at step ", t);
      layout.rows[static_cast<size_t>(t)] = p[t];
    }
  }
  layout.offset.assign(static_cast<size_t>(L), 0);
  int64_t total = 0;
  for (int64_t t = 0; t < L; ++t) {
    layout.offset[t] = total;
    total += layout.stored(t);
  }
  if (layout.packed) {
    TORCH_CHECK(gates_x.size(0) == total, "gates_x must have sum(batch_sizes) = ", total,
                " rows in the packed layout, got ", gates_x.size(0));
  }
  return layout;
}

void check_inputs(const Layout& layout, const at::Tensor& gates_x, const at::Tensor& k,
                  const at::Tensor& weight_hh, const std::optional<at::Tensor>& weight_ch,
                  const at::Tensor& h0, const at::Tensor& c0) {
  const int64_t H = layout.H, N = layout.N;
  TORCH_CHECK(h0.dim() == 2, "h0 must be (N, H), got ", h0.sizes());
  TORCH_CHECK(c0.sizes() == h0.sizes(), "c0 must be ", h0.sizes(), " like h0, got ", c0.sizes());
  TORCH_CHECK(gates_x.size(-1) == 4 * H, "gates_x must have 4H = ", 4 * H,
              " features, got ", gates_x.sizes());
  std::vector<int64_t> k_sizes = gates_x.sizes().vec();
  k_sizes.back() = H;
  TORCH_CHECK(k.sizes() == at::IntArrayRef(k_sizes), "k must be ", at::IntArrayRef(k_sizes),
              " like gates_x with H features, got ", k.sizes());
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
  (void)N;
}

// The stored rows of step t as an (rows, F) matrix view of a (..., F) tensor.
at::Tensor step_rows(const at::Tensor& values, const Layout& layout, int64_t t) {
  const int64_t features = values.size(-1);
  return values.view({-1, features}).narrow(0, layout.offset[t], layout.stored(t));
}

// Each sample's row of `values` after its last step (`initial` for a sample without steps).
at::Tensor gather_last(const at::Tensor& values, const at::Tensor& initial, const Layout& layout) {
  if (!layout.packed) return layout.L == 0 ? initial.clone() : values[layout.L - 1].clone();
  at::Tensor out = initial.clone();
  const std::vector<int64_t> last = layout.last_rows();
  const int64_t H = layout.H;
  const size_t bytes = values.element_size() * H;
  const char* src = static_cast<const char*>(values.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  for (int64_t n = 0; n < layout.N; ++n) {
    if (last[n] >= 0) std::memcpy(dst + n * bytes, src + last[n] * bytes, bytes);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

// Returns (h, h_n, c_n, c, acts): the outputs, then what backward needs besides them.
// `grad_clip` is not used here: it is part of the op so that its registered backward
// (phased_lstm/ops/_cpu/library.py) receives it with the other inputs.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_train(
    const at::Tensor& gates_x, const at::Tensor& k, const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& weight_ch, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& batch_sizes, double grad_clip) {
  TORCH_CHECK(grad_clip > 0, "forward_train: grad_clip must be > 0 (inf for none), got ",
              grad_clip);
  NoAutocast no_autocast(kAutocast);
  FlushSubnormals flush;
  const Layout layout = make_layout(gates_x, h0, batch_sizes);
  check_inputs(layout, gates_x, k, weight_hh, weight_ch, h0, c0);
  const int64_t L = layout.L, N = layout.N, H = layout.H;
  // Each step's pre-activations are written here, then turned into activations in place; the
  // rows of padding are left unwritten (backward never reads them).
  at::Tensor acts = empty_buffer(gates_x.sizes(), gates_x.options());
  at::Tensor h = empty_buffer(k.sizes(), h0.options());
  at::Tensor c = empty_buffer(k.sizes(), h0.options());
  const at::Tensor w_t = weight_hh.t();
  const bool peep = weight_ch.has_value();
  AT_DISPATCH_FLOATING_TYPES(gates_x.scalar_type(), "phased_lstm_forward_train", [&] {
    const scalar_t* w_ch = peep ? weight_ch->data_ptr<scalar_t>() : nullptr;
    const scalar_t* k_p = k.data_ptr<scalar_t>();
    scalar_t* acts_p = acts.data_ptr<scalar_t>();
    scalar_t* h_p = h.data_ptr<scalar_t>();
    scalar_t* c_p = c.data_ptr<scalar_t>();
    for (int64_t t = 0; t < L; ++t) {
      const at::Tensor h_prev = t == 0 ? h0 : step_rows(h, layout, t - 1);
      const int64_t active = layout.rows[t];
      if (active > 0) {
        at::Tensor acts_t = step_rows(acts, layout, t).narrow(0, 0, active);
        at::addmm_out(acts_t, step_rows(gates_x, layout, t).narrow(0, 0, active),
                      h_prev.narrow(0, 0, active), w_t);
      }
      const scalar_t* hp = h_prev.data_ptr<scalar_t>();
      const scalar_t* cp = t == 0 ? c0.data_ptr<scalar_t>() : c_p + layout.offset[t - 1] * H;
      const int64_t base = layout.offset[t];
      at::parallel_for(0, layout.stored(t), row_grain(H), [&](int64_t begin, int64_t end) {
        FlushSubnormals flush_here;
        for (int64_t n = begin; n < end; ++n) {
          const int64_t row = (base + n) * H;
          if (n >= active) {  // padding: the state is held
            std::memcpy(h_p + row, hp + n * H, sizeof(scalar_t) * H);
            std::memcpy(c_p + row, cp + n * H, sizeof(scalar_t) * H);
            continue;
          }
          scalar_t* gates = acts_p + (base + n) * 4 * H;
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
  (void)N;
  return {h, gather_last(h, h0, layout), gather_last(c, c0, layout), c, acts};
}

// Returns the gradients of (gates_x, k, weight_hh, weight_ch, h0, c0); that of weight_ch is an
// empty tensor without peepholes, and that of weight_hh too when `weight_hh_grad` is false.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_h, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
    const at::Tensor& k, const at::Tensor& weight_hh, const std::optional<at::Tensor>& weight_ch,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& h, const at::Tensor& c,
    const at::Tensor& acts, bool weight_hh_grad, double grad_clip,
    const std::optional<at::Tensor>& batch_sizes) {
  NoAutocast no_autocast(kAutocast);
  FlushSubnormals flush;
  const Layout layout = make_layout(acts, h0, batch_sizes);
  check_inputs(layout, acts, k, weight_hh, weight_ch, h0, c0);
  TORCH_CHECK(grad_clip > 0, "backward: grad_clip must be > 0 (inf for none), got ", grad_clip);
  const int64_t L = layout.L, N = layout.N, H = layout.H;
  for (const auto* t : {&grad_h, &h, &c}) {
    TORCH_CHECK(t->sizes() == k.sizes() && t->is_contiguous() &&
                    t->scalar_type() == k.scalar_type(),
                "backward: saved states and grad_h must be contiguous and shaped like k");
  }
  for (const auto* t : {&grad_h_n, &grad_c_n}) {
    TORCH_CHECK(t->sizes() == h0.sizes() && t->is_contiguous() &&
                    t->scalar_type() == k.scalar_type(),
                "backward: grad_h_n and grad_c_n must be contiguous (N, H) like h0");
  }
  const bool peep = weight_ch.has_value();
  at::Tensor dgates = empty_buffer(acts.sizes(), acts.options());
  at::Tensor dk = empty_buffer(k.sizes(), k.options());
  // dL/dh and dL/dc of every sample at the step being processed. A sample past its last step
  // (packed) holds the gradient of its final state until the loop reaches that step.
  at::Tensor dh = grad_h_n.clone();
  if (L > 0) dh.narrow(0, 0, layout.stored(L - 1)).add_(step_rows(grad_h, layout, L - 1));
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
      const int64_t prev = t == 0 ? 0 : layout.offset[t - 1];
      const scalar_t* hp = t == 0 ? h0.data_ptr<scalar_t>() : h_p + prev * H;
      const scalar_t* cp = t == 0 ? c0.data_ptr<scalar_t>() : c_p + prev * H;
      // The output's gradient at step t - 1, for the samples stored there.
      const scalar_t* seed = t == 0 ? nullptr : gh_p + prev * H;
      const int64_t seeded = t == 0 ? 0 : layout.stored(t - 1);
      const scalar_t* dh_p = dh.data_ptr<scalar_t>();
      scalar_t* dhp_p = dh_prev.data_ptr<scalar_t>();
      const int64_t active = layout.rows[t];
      const int64_t stored = layout.stored(t);
      const int64_t base = layout.offset[t];
      at::parallel_for(0, N, row_grain(H), [&](int64_t begin, int64_t end) {
        FlushSubnormals flush_here;
        const int64_t tid = at::get_thread_num();
        TORCH_CHECK(!peep || tid < threads, "phased_lstm backward: unexpected thread id");
        double* acc_t = peep ? acc_p + tid * 3 * H : nullptr;
        for (int64_t n = begin; n < end; ++n) {
          const int64_t row = (base + n) * H;
          const int64_t grow = (base + n) * 4 * H;
          const scalar_t* seed_n = n < seeded ? seed + n * H : nullptr;
          if (n >= active) {
            // Padding (stored) or a sample already ended (packed): the gradient passes to the
            // held state unchanged, plus the output's gradient where the sample has one.
            if (n < stored) {
              std::fill_n(dgates_p + grow, 4 * H, scalar_t(0));
              std::fill_n(dk_p + row, H, scalar_t(0));
            }
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
        dh_prev.narrow(0, 0, active)
            .addmm_(step_rows(dgates, layout, t).narrow(0, 0, active), weight_hh);
      }
      std::swap(dh, dh_prev);
    }
  });
  at::Tensor dweight_hh;
  if (!weight_hh_grad) {
    dweight_hh = at::empty({0}, k.options());
  } else if (!layout.packed) {
    // sum_t dgates_t^T h_{t-1}, as one product over all steps but the first, plus the first.
    dweight_hh = at::mm(dgates.narrow(0, 1, L - 1).reshape({-1, 4 * H}).t(),
                        h.narrow(0, 0, L - 1).reshape({-1, H}));
    dweight_hh.addmm_(dgates[0].t(), h0);
  } else {
    // Packed: the state each stored row started from, row by row, then one product.
    std::vector<int64_t> index;
    index.reserve(static_cast<size_t>(acts.size(0)));
    for (int64_t t = 0; t < L; ++t) {
      for (int64_t n = 0; n < layout.rows[t]; ++n) {
        index.push_back(t == 0 ? n : N + layout.offset[t - 1] + n);
      }
    }
    const at::Tensor starts = at::cat({h0, h}).index_select(
        0, at::tensor(index, at::TensorOptions().dtype(at::kLong)));
    dweight_hh = at::mm(dgates.t(), starts);
  }
  at::Tensor dweight_ch = peep ? acc.sum(0).to(k.scalar_type()) : at::empty({0}, k.options());
  return {dgates, dk, dweight_hh, dweight_ch, dh, dc};
}

// `dense_above`: a step whose share of open (sample, neuron) pairs exceeds it runs as one
// dense matrix product; below it only the open pairs are computed. Steps with no open pair
// are a copy either way. Padding must come with k = 0 (it is then held, as any closed neuron).
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_infer(
    const at::Tensor& gates_x, const at::Tensor& k, const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& weight_ch, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& batch_sizes, double dense_above) {
  NoAutocast no_autocast(kAutocast);
  FlushSubnormals flush;
  const Layout layout = make_layout(gates_x, h0, batch_sizes);
  check_inputs(layout, gates_x, k, weight_hh, weight_ch, h0, c0);
  const int64_t L = layout.L, N = layout.N, H = layout.H;
  at::Tensor h = empty_buffer(k.sizes(), h0.options());
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
      const int64_t rows = layout.stored(t);
      const int64_t base = layout.offset[t];
      const scalar_t* kt = k_p + base * H;
      const at::Tensor h_prev = t == 0 ? h0 : step_rows(h, layout, t - 1);
      const scalar_t* hp = h_prev.data_ptr<scalar_t>();
      scalar_t* ht = h_p + base * H;
      std::fill(open_per_neuron.begin(), open_per_neuron.end(), 0);
      for (int64_t n = 0; n < rows; ++n) {
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
        std::memcpy(ht, hp, sizeof(scalar_t) * rows * H);
        continue;
      }
      scalar_t* c_p = c_cur->data_ptr<scalar_t>();
      if (static_cast<double>(pairs) > dense_above * static_cast<double>(rows * H)) {
        at::Tensor gates_t = gates.narrow(0, 0, rows);
        gates_t.copy_(step_rows(gates_x, layout, t));
        gates_t.addmm_(h_prev.narrow(0, 0, rows), w_t);
        scalar_t* c_out = c_next->data_ptr<scalar_t>();
        // Samples past their last step (packed) keep their cell state in the other buffer.
        if (rows < N) {
          std::memcpy(c_out + rows * H, c_p + rows * H, sizeof(scalar_t) * (N - rows) * H);
        }
        at::parallel_for(0, rows, row_grain(H), [&](int64_t begin, int64_t end) {
          FlushSubnormals flush_here;
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
        for (int64_t n = 0; n < rows; ++n) {
          for (int64_t j = 0; j < H; ++j) {
            if (kt[n * H + j] != scalar_t(0)) samples[fill[j]++] = n;
          }
        }
      }
      std::memcpy(ht, hp, sizeof(scalar_t) * rows * H);
      const scalar_t* gxt = gx_p + base * 4 * H;
      const int64_t work_per_neuron = std::max<int64_t>(1, 4 * H * pairs / count);
      const int64_t grain = std::max<int64_t>(1, (1 << 14) / work_per_neuron);
      at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
        FlushSubnormals flush_here;
        scalar_t pre[4];
        for (int64_t q = begin; q < end; ++q) {
          const int64_t j = neurons[q];
          for (int64_t s = start[q]; s < start[q + 1]; ++s) {
            const int64_t n = samples[s];
            dot4(w, H, H, j, hp + n * H, pre);
            const scalar_t* gx = gxt + n * 4 * H;
            for (int64_t gate = 0; gate < 4; ++gate) pre[gate] = gx[gate * H + j] + pre[gate];
            update_one(pre, w_ch, H, j, kt[n * H + j], c_p[n * H + j], ht[n * H + j]);
          }
        }
      });
    }
    if (c_cur != &c_a) std::swap(c_a, c_b);
  });
  return {h, gather_last(h, h0, layout), c_a};
}

}  // namespace

TORCH_LIBRARY(phased_lstm, m) {
  // Fake implementations and autograd formulas: phased_lstm/ops/_cpu/library.py.
  m.def(
      "forward_train(Tensor gates_x, Tensor k, Tensor weight_hh, Tensor? weight_ch, Tensor h0, "
      "Tensor c0, Tensor? batch_sizes, float grad_clip) -> (Tensor, Tensor, Tensor, Tensor, "
      "Tensor)");
  m.def(
      "backward(Tensor grad_h, Tensor grad_h_n, Tensor grad_c_n, Tensor k, Tensor weight_hh, "
      "Tensor? weight_ch, Tensor h0, Tensor c0, Tensor h, Tensor c, Tensor acts, "
      "bool weight_hh_grad, float grad_clip, Tensor? batch_sizes) -> (Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor)");
  m.def(
      "forward_infer(Tensor gates_x, Tensor k, Tensor weight_hh, Tensor? weight_ch, Tensor h0, "
      "Tensor c0, Tensor? batch_sizes, float dense_above) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(phased_lstm, CPU, m) {
  m.impl("forward_train", &forward_train);
  m.impl("backward", &backward);
  m.impl("forward_infer", &forward_infer);
}
