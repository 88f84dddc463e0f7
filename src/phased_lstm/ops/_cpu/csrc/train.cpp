// The fused training kernels of the Phased LSTM recurrence, compiled on first use by
// phased_lstm/ops/build.py and registered as torch ops in the namespace `phased_lstm` (the
// library is defined here; infer.cpp and time_gate.cpp add fragments to it).
//
//   forward_train  the recurrence, keeping only what backward needs: the gate activations
//                  (i, f, g, o) and the cell state c of every step (h is the output anyway);
//   backward       hand-written BPTT over those, one matrix product per step, the gradient of
//                  W_hh as one large product after the loop.
//
// The layouts of the steps (padded, packed) are described in layout.h. The equations are those
// of phased_lstm/ops/reference.py, in the same order of operations. Matrix products go through
// ATen (MKL on x86). Each step is one parallel region over blocks of neurons (layout.h,
// Blocks): a thread multiplies its block's rows of W_hh, then does the elementwise work of the
// block, one loop over raw pointers that the compiler vectorises; nothing is allocated per step.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "layout.h"
#include "lstm_math.h"

namespace {

using namespace phased_lstm;

// `rows` of a matrix's leading rows, without a new view when that is all of them (views cost
// about a microsecond each, several per step).
at::Tensor leading(const at::Tensor& matrix, int64_t rows) {
  return rows == matrix.size(0) ? matrix : matrix.narrow(0, 0, rows);
}

// Block p's rows of a (4H, F) weight ordered by rows_by_block, (4 size(p), F).
std::vector<at::Tensor> block_rows(const at::Tensor& w, const Blocks& blocks) {
  std::vector<at::Tensor> rows;
  for (int64_t p = 0; p < blocks.count(); ++p) {
    rows.push_back(w.narrow(0, 4 * blocks.begin[p], 4 * blocks.size(p)));
  }
  return rows;
}

// Block p's (N, 4 size(p)) matrix within a buffer of N 4H elements.
std::vector<at::Tensor> block_matrices(const at::Tensor& buffer, const Blocks& blocks,
                                       int64_t N) {
  std::vector<at::Tensor> out;
  for (int64_t p = 0; p < blocks.count(); ++p) {
    const int64_t B = blocks.size(p);
    out.push_back(buffer.narrow(0, N * 4 * blocks.begin[p], N * 4 * B).view({N, 4 * B}));
  }
  return out;
}

// The blocks of a step's work (B samples, H neurons: a (B, H) x (H, 4H) product).
Blocks train_blocks(int64_t N, int64_t H) {
  return neuron_blocks(H, N * 4 * H * H, at::get_num_threads());
}

// The forward recurrence over every step into `acts` (the activations, (..., 4H)), returning
// (h, h_n, c_n, c, acts). The input part of the pre-activations is `gx` (..., 4H), x W_ih^T
// with or without the bias, plus `bias` (4H,) when given; `gx` may be `acts` itself, which each
// step then turns from input parts into activations in place.
template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> run_forward(
    const Layout& layout, const at::Tensor& gx, const std::optional<at::Tensor>& bias,
    const at::Tensor& acts, const at::Tensor& k, const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& weight_ch, const at::Tensor& h0, const at::Tensor& c0) {
  const int64_t L = layout.L, N = layout.N, H = layout.H;
  at::Tensor h = empty_buffer(k.sizes(), h0.options());
  at::Tensor c = empty_buffer(k.sizes(), h0.options());
  const Blocks blocks = train_blocks(N, H);
  const at::Tensor w = rows_by_block(weight_hh, blocks);
  // h_prev W_hh^T of a step, block p's columns as an (N, 4 size(p)) matrix from N 4 begin[p].
  const at::Tensor rec = at::empty({N * 4 * H}, acts.options());
  const std::vector<at::Tensor> w_rows = block_rows(w, blocks);
  const std::vector<at::Tensor> rec_blocks = block_matrices(rec, blocks, N);
  const bool peep = weight_ch.has_value();
  const T* w_ch = peep ? weight_ch->data_ptr<T>() : nullptr;
  const T* bias_p = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  const T* gx_p = gx.data_ptr<T>();
  const T* k_p = k.data_ptr<T>();
  T* acts_p = acts.data_ptr<T>();
  T* h_p = h.data_ptr<T>();
  T* c_p = c.data_ptr<T>();
  T* rec_p = rec.data_ptr<T>();
  // From gates_x into a buffer of its own, or in place (no bias then, or with one).
  using Cols = decltype(&forward_cols<T, true, kActsOut, false>);
  const bool in_place = gx_p == acts_p;
  TORCH_CHECK(in_place || bias_p == nullptr, "run_forward: a bias is added in place only");
  const Cols cols[2][3] = {{forward_cols<T, false, kActsOut, false>,
                            forward_cols<T, false, kActsInPlace, false>,
                            forward_cols<T, false, kActsInPlace, true>},
                           {forward_cols<T, true, kActsOut, false>,
                            forward_cols<T, true, kActsInPlace, false>,
                            forward_cols<T, true, kActsInPlace, true>}};
  const Cols run = cols[peep][in_place ? (bias_p != nullptr ? 2 : 1) : 0];
  for (int64_t t = 0; t < L; ++t) {
    const at::Tensor h_prev = t == 0 ? h0 : step_rows(h, layout, t - 1);
    const T* hp = h_prev.data_ptr<T>();
    const T* cp = t == 0 ? c0.data_ptr<T>() : c_p + layout.offset[t - 1] * H;
    const int64_t active = layout.rows[t];
    const int64_t stored = layout.stored(t);
    const int64_t base = layout.offset[t];
    for_each_block(blocks, [&](int64_t p) {
      const int64_t j0 = blocks.begin[p], B = blocks.size(p);
      T* rec_block = rec_p + N * 4 * j0;
      if (active > 0) {
        at::Tensor out = leading(rec_blocks[p], active);
        at::mm_out(out, leading(h_prev, active), w_rows[p].t());
      }
      for (int64_t n = 0; n < active; ++n) {
        const int64_t row = (base + n) * H + j0;
        const int64_t gates = (base + n) * 4 * H + j0;
        run(in_place ? nullptr : gx_p + gates, H, bias_p == nullptr ? nullptr : bias_p + j0,
            rec_block + n * 4 * B, B, acts_p + gates, H, cp + n * H + j0, hp + n * H + j0,
            k_p + row, peep ? w_ch + j0 : nullptr, H, c_p + row, h_p + row, B);
      }
      for (int64_t n = active; n < stored; ++n) {  // padding: the state is held
        const int64_t row = (base + n) * H + j0;
        std::memcpy(h_p + row, hp + n * H + j0, sizeof(T) * B);
        std::memcpy(c_p + row, cp + n * H + j0, sizeof(T) * B);
        if (!in_place) {  // zeros, not what the allocator held: the same output every call
          const int64_t gates = (base + n) * 4 * H + j0;
          for (int64_t gate = 0; gate < 4; ++gate) {
            std::memset(acts_p + gates + gate * H, 0, sizeof(T) * B);
          }
        }
      }
    });
  }
  return {h, gather_last(h, h0, layout), gather_last(c, c0, layout), c, acts};
}

// Returns (h, h_n, c_n, c, acts): the outputs, then what backward needs besides them.
// `grad_clip` is not used here: it is part of the op so that its registered backward
// (phased_lstm/ops/_cpu/library.py) receives it with the other inputs.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_train(
    const at::Tensor& gates_x, const at::Tensor& k, const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& weight_ch, const at::Tensor& h0, const at::Tensor& c0,
    const std::optional<at::Tensor>& batch_sizes, double grad_clip) {
  TORCH_CHECK(grad_clip > 0, "forward_train: grad_clip must be > 0 (inf for none), got ",
              grad_clip);
  NoAutocast no_autocast(autocast_keys());
  FlushSubnormals flush;
  const Layout layout = make_layout(gates_x, h0, batch_sizes, "gates_x");
  check_inputs(layout, gates_x, k, weight_hh, weight_ch, h0, c0);
  // The activations of every step; the rows of padding hold zeros (backward never reads them,
  // but an output must not depend on what the allocator held).
  const at::Tensor acts = empty_buffer(gates_x.sizes(), gates_x.options());
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(gates_x.scalar_type(), "phased_lstm_forward_train", [&] {
    out = run_forward<scalar_t>(layout, gates_x, std::nullopt, acts, k, weight_hh, weight_ch,
                                h0, c0);
  });
  return out;
}

// forward_train from the layer input: x (L, N, I) or packed (S, I), W_ih (4H, I) and the
// summed bias (4H,) or none instead of gates_x. The input projection of every step is one
// product written straight into the activations' buffer, which the steps then overwrite in
// place: no (L, N, 4H) tensor besides the activations, and no pass that adds the bias to it.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_train_input(
    const at::Tensor& x, const at::Tensor& weight_ih, const std::optional<at::Tensor>& bias,
    const at::Tensor& k, const at::Tensor& weight_hh, const std::optional<at::Tensor>& weight_ch,
    const at::Tensor& h0, const at::Tensor& c0, const std::optional<at::Tensor>& batch_sizes,
    double grad_clip) {
  TORCH_CHECK(grad_clip > 0, "forward_train_input: grad_clip must be > 0 (inf for none), got ",
              grad_clip);
  NoAutocast no_autocast(autocast_keys());
  FlushSubnormals flush;
  const Layout layout = make_layout(x, h0, batch_sizes, "x");
  check_input_projection(layout, x, weight_ih, bias);
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = 4 * layout.H;
  const at::Tensor acts = empty_buffer(sizes, x.options());
  check_inputs(layout, acts, k, weight_hh, weight_ch, h0, c0);
  at::Tensor projection = acts.view({-1, 4 * layout.H});
  at::mm_out(projection, x.reshape({-1, x.size(-1)}), weight_ih.t());
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "phased_lstm_forward_train_input", [&] {
    out = run_forward<scalar_t>(layout, acts, bias, acts, k, weight_hh, weight_ch, h0, c0);
  });
  return out;
}

// dL/dW_hh = sum_t dgates_t^T h_{t-1}, as one product over all steps.
at::Tensor weight_hh_gradient(const at::Tensor& dgates, const at::Tensor& h, const at::Tensor& h0,
                              const Layout& layout) {
  const int64_t L = layout.L, N = layout.N, H = layout.H;
  if (!layout.packed) {
    // One product over all steps but the first, plus the first.
    at::Tensor grad = at::mm(dgates.narrow(0, 1, L - 1).reshape({-1, 4 * H}).t(),
                             h.narrow(0, 0, L - 1).reshape({-1, H}));
    return grad.addmm_(dgates[0].t(), h0);
  }
  // Packed: the state each stored row started from, row by row, then one product.
  std::vector<int64_t> index;
  index.reserve(static_cast<size_t>(dgates.size(0)));
  for (int64_t t = 0; t < L; ++t) {
    for (int64_t n = 0; n < layout.rows[t]; ++n) {
      index.push_back(t == 0 ? n : N + layout.offset[t - 1] + n);
    }
  }
  const at::Tensor starts = at::cat({h0, h}).index_select(
      0, at::tensor(index, at::TensorOptions().dtype(at::kLong)));
  return at::mm(dgates.t(), starts);
}

// Returns the gradients of (gates_x, k, weight_hh, weight_ch, h0, c0); that of weight_ch is an
// empty tensor without peepholes, and that of weight_hh too when `weight_hh_grad` is false.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_h, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
    const at::Tensor& k, const at::Tensor& weight_hh, const std::optional<at::Tensor>& weight_ch,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& h, const at::Tensor& c,
    const at::Tensor& acts, bool weight_hh_grad, double grad_clip,
    const std::optional<at::Tensor>& batch_sizes) {
  NoAutocast no_autocast(autocast_keys());
  FlushSubnormals flush;
  const Layout layout = make_layout(acts, h0, batch_sizes, "acts");
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
  // dL/dh and dL/dc of every sample at the step being processed, less the part that comes
  // through W_hh from the step after it (see `parts`). A sample past its last step (packed)
  // holds the gradient of its final state until the loop reaches that step.
  at::Tensor dh = grad_h_n.clone();
  if (L > 0) dh.narrow(0, 0, layout.stored(L - 1)).add_(step_rows(grad_h, layout, L - 1));
  at::Tensor dh_prev = at::empty_like(dh);
  at::Tensor dc = grad_c_n.clone();
  const Blocks blocks = train_blocks(N, H);
  const int64_t P = blocks.count();
  const at::Tensor w = rows_by_block(weight_hh, blocks);
  // Block p's gradients of step t's pre-activations times its rows of W_hh: its share of
  // dL/dh_{t-1}, (N, H), which the blocks sum over their own neurons at step t - 1. Two sets,
  // written and read at alternate steps. With several blocks, each copies its gradients into
  // `dg_block` ((N, 4 size(p)) from N 4 begin[p]) for its product.
  const at::Tensor parts = at::empty({2, P, N, H}, k.options());
  const at::Tensor dg_block = at::empty({P > 1 ? N * 4 * H : 0}, k.options());
  const std::vector<at::Tensor> w_rows = block_rows(w, blocks);
  const std::vector<at::Tensor> dg_blocks =
      P > 1 ? block_matrices(dg_block, blocks, N) : std::vector<at::Tensor>();
  std::vector<at::Tensor> part_sets[2];
  for (int64_t set = 0; set < 2; ++set) {
    for (int64_t p = 0; p < P; ++p) part_sets[set].push_back(parts[set][p]);
  }
  // The peephole sums, in double; each neuron's belong to one block.
  at::Tensor acc = at::zeros({peep ? 3 * H : 0}, k.options().dtype(at::kDouble));
  int64_t summed_rows = 0;  // rows of the set of parts written at the step after
  AT_DISPATCH_FLOATING_TYPES(acts.scalar_type(), "phased_lstm_backward", [&] {
    using T = scalar_t;
    const T* w_ch = peep ? weight_ch->data_ptr<T>() : nullptr;
    const T* k_p = k.data_ptr<T>();
    const T* acts_p = acts.data_ptr<T>();
    const T* h_p = h.data_ptr<T>();
    const T* c_p = c.data_ptr<T>();
    const T* gh_p = grad_h.data_ptr<T>();
    T* dgates_p = dgates.data_ptr<T>();
    T* dk_p = dk.data_ptr<T>();
    T* dc_p = dc.data_ptr<T>();
    T* dgb_p = P > 1 ? dg_block.data_ptr<T>() : nullptr;
    double* acc_p = peep ? acc.data_ptr<double>() : nullptr;
    const T* parts_p = parts.data_ptr<T>();
    const auto clip = static_cast<T>(grad_clip);
    for (int64_t t = L - 1; t >= 0; --t) {
      const int64_t prev = t == 0 ? 0 : layout.offset[t - 1];
      const T* hp = t == 0 ? h0.data_ptr<T>() : h_p + prev * H;
      const T* cp = t == 0 ? c0.data_ptr<T>() : c_p + prev * H;
      // The output's gradient at step t - 1, for the samples stored there.
      const T* seed = t == 0 ? nullptr : gh_p + prev * H;
      const int64_t seeded = t == 0 ? 0 : layout.stored(t - 1);
      T* dh_p = dh.data_ptr<T>();
      T* dhp_p = dh_prev.data_ptr<T>();
      const int64_t active = layout.rows[t];
      const int64_t stored = layout.stored(t);
      const int64_t base = layout.offset[t];
      const int64_t read_set = t % 2, write_set = 1 - read_set;
      const T* read_parts = parts_p + read_set * P * N * H;
      for_each_block(blocks, [&](int64_t p) {
        const int64_t j0 = blocks.begin[p], B = blocks.size(p);
        // dL/dh_t of this block's neurons: what came through W_hh from step t + 1 added.
        for (int64_t n = 0; n < summed_rows; ++n) {
          T* __restrict__ out = dh_p + n * H + j0;
          for (int64_t q = 0; q < P; ++q) {
            const T* __restrict__ part = read_parts + (q * N + n) * H + j0;
            for (int64_t j = 0; j < B; ++j) out[j] += part[j];
          }
        }
        T* dgb = P > 1 ? dgb_p + N * 4 * j0 : nullptr;
        for (int64_t n = 0; n < N; ++n) {
          const int64_t row = (base + n) * H + j0;
          const int64_t grow = (base + n) * 4 * H + j0;
          const T* seed_n = n < seeded ? seed + n * H + j0 : nullptr;
          if (n >= active) {
            // Padding (stored) or a sample already ended (packed): the gradient passes to the
            // held state unchanged, plus the output's gradient where the sample has one.
            if (n < stored) {
              for (int64_t q = 0; q < 4; ++q) std::fill_n(dgates_p + grow + q * H, B, T(0));
              std::fill_n(dk_p + row, B, T(0));
            }
            for (int64_t j = 0; j < B; ++j) {
              dhp_p[n * H + j0 + j] =
                  dh_p[n * H + j0 + j] + (seed_n != nullptr ? seed_n[j] : T(0));
            }
            continue;
          }
          const auto run = peep ? (P > 1 ? backward_cols<T, true, true>
                                         : backward_cols<T, true, false>)
                                : (P > 1 ? backward_cols<T, false, true>
                                         : backward_cols<T, false, false>);
          run(acts_p + grow, H, cp + n * H + j0, hp + n * H + j0, k_p + row,
              peep ? w_ch + j0 : nullptr, H, dh_p + n * H + j0, dc_p + n * H + j0, seed_n,
              dhp_p + n * H + j0, dgates_p + grow, H, P > 1 ? dgb + n * 4 * B : nullptr, B,
              dk_p + row, peep ? acc_p + j0 : nullptr, clip, B);
        }
        if (active > 0) {
          const at::Tensor grads = P > 1 ? leading(dg_blocks[p], active)
                                         : leading(step_rows(dgates, layout, t), active);
          at::Tensor out = leading(part_sets[write_set][p], active);
          at::mm_out(out, grads, w_rows[p]);
        }
      });
      summed_rows = active;
      std::swap(dh, dh_prev);
    }
    // dL/dh_0: what came through W_hh from the first step (written into set 1) added.
    if (summed_rows > 0) {
      dh.narrow(0, 0, summed_rows).add_(parts[1].narrow(1, 0, summed_rows).sum(0));
    }
  });
  at::Tensor dweight_hh = weight_hh_grad ? weight_hh_gradient(dgates, h, h0, layout)
                                         : at::empty({0}, k.options());
  at::Tensor dweight_ch = peep ? acc.to(k.scalar_type()) : at::empty({0}, k.options());
  return {dgates, dk, dweight_hh, dweight_ch, dh, dc};
}

}  // namespace

TORCH_LIBRARY(phased_lstm, m) {
  // Fake implementations and autograd formulas: phased_lstm/ops/_cpu/library.py.
  m.def(
      "forward_train(Tensor gates_x, Tensor k, Tensor weight_hh, Tensor? weight_ch, Tensor h0, "
      "Tensor c0, Tensor? batch_sizes, float grad_clip) -> (Tensor, Tensor, Tensor, Tensor, "
      "Tensor)");
  m.def(
      "forward_train_input(Tensor x, Tensor weight_ih, Tensor? bias, Tensor k, Tensor weight_hh, "
      "Tensor? weight_ch, Tensor h0, Tensor c0, Tensor? batch_sizes, float grad_clip) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "backward(Tensor grad_h, Tensor grad_h_n, Tensor grad_c_n, Tensor k, Tensor weight_hh, "
      "Tensor? weight_ch, Tensor h0, Tensor c0, Tensor h, Tensor c, Tensor acts, "
      "bool weight_hh_grad, float grad_clip, Tensor? batch_sizes) -> (Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(phased_lstm, CPU, m) {
  m.impl("forward_train", &forward_train);
  m.impl("forward_train_input", &forward_train_input);
  m.impl("backward", &backward);
}
