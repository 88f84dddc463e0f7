// What the sequence kernels (train.cpp, infer.cpp) share: where the rows of each step are
// stored, the checks of their inputs, and how the neurons of a step are split among threads.
//
// Two layouts of the steps:
//   padded  values (L, N, F). With `batch_sizes` (L,) (samples sorted by length, longest
//           first) only the first batch_sizes[t] rows of step t are computed; the others are
//           padding: their state is copied and their gradients are zero.
//   packed  values (S, F): the data of a PackedSequence, step t holding batch_sizes[t] rows
//           one after the other. Nothing is stored for a sample after its last step; h_n and
//           c_n are each sample's state after its last step.
// Either way a batch of unequal lengths costs its valid steps, not its longest sequence times
// the batch.

#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "lstm_math.h"

namespace phased_lstm {

// Matrix products inside the kernels run in the kernels' dtype: autocast, if the caller has it
// on, must not turn them into float16/bfloat16 products that no longer fit their outputs.
using NoAutocast = c10::impl::ExcludeDispatchKeyGuard;
inline c10::DispatchKeySet autocast_keys() {
  return c10::DispatchKeySet({c10::DispatchKey::AutocastCPU});
}

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

// The layout of `steps`, (L, N, F) or packed (S, F), for N = h0.size(0) samples.
inline Layout make_layout(const at::Tensor& steps, const at::Tensor& h0,
                          const std::optional<at::Tensor>& batch_sizes, const char* name) {
  Layout layout;
  layout.H = h0.size(-1);
  layout.N = h0.size(0);
  layout.packed = steps.dim() == 2;
  if (layout.packed) {
    TORCH_CHECK(batch_sizes.has_value(), "the packed layout (", name,
                " of shape (S, F)) needs batch_sizes");
    layout.L = batch_sizes->size(0);
  } else {
    TORCH_CHECK(steps.dim() == 3, name, " must be (L, N, F) or (S, F), got ", steps.sizes());
    layout.L = steps.size(0);
    TORCH_CHECK(steps.size(1) == layout.N, name, " must be (L, N, F) with N = ", layout.N,
                " like h0, got ", steps.sizes());
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
    TORCH_CHECK(steps.size(0) == total, name, " must have sum(batch_sizes) = ", total,
                " rows in the packed layout, got ", steps.size(0));
  }
  return layout;
}

// The recurrent tensors every sequence kernel takes: W_hh, the peepholes and the initial state,
// and the tensors stored per step (`stepped`, each with the feature count that follows it).
inline void check_recurrent(const Layout& layout, const at::Tensor& weight_hh,
                            const std::optional<at::Tensor>& weight_ch, const at::Tensor& h0,
                            const at::Tensor& c0, at::ScalarType dtype,
                            std::vector<at::Tensor> others) {
  const int64_t H = layout.H;
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "the fused kernels take float32 or float64, got ", dtype);
  TORCH_CHECK(h0.dim() == 2, "h0 must be (N, H), got ", h0.sizes());
  TORCH_CHECK(c0.sizes() == h0.sizes(), "c0 must be ", h0.sizes(), " like h0, got ", c0.sizes());
  TORCH_CHECK(weight_hh.dim() == 2 && weight_hh.size(0) == 4 * H && weight_hh.size(1) == H,
              "weight_hh must be (4H, H) = (", 4 * H, ", ", H, "), got ", weight_hh.sizes());
  others.push_back(weight_hh);
  others.push_back(h0);
  others.push_back(c0);
  if (weight_ch.has_value()) {
    TORCH_CHECK(weight_ch->dim() == 1 && weight_ch->size(0) == 3 * H,
                "weight_ch must be (3H,) = (", 3 * H, ",), got ", weight_ch->sizes());
    others.push_back(*weight_ch);
  }
  for (const auto& t : others) {
    TORCH_CHECK(t.device().is_cpu(), "the fused kernels run on the CPU, got a tensor on ",
                t.device());
    TORCH_CHECK(t.scalar_type() == dtype, "all inputs must have the dtype of the steps (",
                dtype, "), got ", t.scalar_type());
    TORCH_CHECK(t.is_contiguous(), "the fused kernels take contiguous tensors");
  }
}

// The checks of the ops that take the gate pre-activations `gates_x` and the gate `k`.
inline void check_inputs(const Layout& layout, const at::Tensor& gates_x, const at::Tensor& k,
                         const at::Tensor& weight_hh, const std::optional<at::Tensor>& weight_ch,
                         const at::Tensor& h0, const at::Tensor& c0) {
  const int64_t H = layout.H;
  TORCH_CHECK(gates_x.size(-1) == 4 * H, "gates_x must have 4H = ", 4 * H,
              " features, got ", gates_x.sizes());
  std::vector<int64_t> k_sizes = gates_x.sizes().vec();
  k_sizes.back() = H;
  TORCH_CHECK(k.sizes() == at::IntArrayRef(k_sizes), "k must be ", at::IntArrayRef(k_sizes),
              " like gates_x with H features, got ", k.sizes());
  check_recurrent(layout, weight_hh, weight_ch, h0, c0, gates_x.scalar_type(), {gates_x, k});
}

// The checks of the ops that take the layer input x (..., I) with W_ih (4H, I) and the summed
// bias (4H,) or none, instead of gates_x.
inline void check_input_projection(const Layout& layout, const at::Tensor& x,
                                   const at::Tensor& weight_ih,
                                   const std::optional<at::Tensor>& bias) {
  const int64_t H = layout.H, I = x.size(-1);
  TORCH_CHECK(weight_ih.dim() == 2 && weight_ih.size(0) == 4 * H && weight_ih.size(1) == I,
              "weight_ih must be (4H, I) = (", 4 * H, ", ", I, "), got ", weight_ih.sizes());
  std::vector<at::Tensor> all = {x, weight_ih};
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == 4 * H, "bias must be (4H,) = (", 4 * H,
                ",), got ", bias->sizes());
    all.push_back(*bias);
  }
  for (const auto& t : all) {
    TORCH_CHECK(t.device().is_cpu(), "the fused kernels run on the CPU, got a tensor on ",
                t.device());
    TORCH_CHECK(t.scalar_type() == x.scalar_type(), "all inputs must have the dtype of x (",
                x.scalar_type(), "), got ", t.scalar_type());
    TORCH_CHECK(t.is_contiguous(), "the fused kernels take contiguous tensors");
  }
}

// The stored rows of step t as an (rows, F) matrix view of a (..., F) tensor.
inline at::Tensor step_rows(const at::Tensor& values, const Layout& layout, int64_t t) {
  const int64_t features = values.size(-1);
  return values.view({-1, features}).narrow(0, layout.offset[t], layout.stored(t));
}

// Each sample's row of `values` after its last step (`initial` for a sample without steps).
inline at::Tensor gather_last(const at::Tensor& values, const at::Tensor& initial,
                              const Layout& layout) {
  if (!layout.packed) return layout.L == 0 ? initial.clone() : values[layout.L - 1].clone();
  at::Tensor out = initial.clone();
  const std::vector<int64_t> last = layout.last_rows();
  const size_t bytes = values.element_size() * layout.H;
  const char* src = static_cast<const char*>(values.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  for (int64_t n = 0; n < layout.N; ++n) {
    if (last[n] >= 0) std::memcpy(dst + n * bytes, src + last[n] * bytes, bytes);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The neurons of a step split among threads: block p owns neurons [begin[p], begin[p + 1]),
// all four gates of each. A step then needs one parallel region: each thread computes the
// matrix product of its own rows of W_hh (one BLAS call, single-threaded inside the region)
// and the elementwise work of its own neurons, which no other thread reads or writes before
// the region ends. Splitting the product by threads this way instead of leaving it to BLAS
// saves a region per step, keeps a block's gates in its thread's cache from the product to
// the elementwise pass, and lets each thread read only its share of W_hh.
struct Blocks {
  std::vector<int64_t> begin;  // size count() + 1
  int64_t count() const { return static_cast<int64_t>(begin.size()) - 1; }
  int64_t size(int64_t p) const { return begin[p + 1] - begin[p]; }
};

// Blocks of H neurons for `threads` threads, when a step's `work` (multiply-adds) is worth a
// parallel region: a region costs microseconds, and blocks are kept at least 16 neurons wide
// and start at multiples of 8 (whole vectors of the elementwise loops).
inline Blocks neuron_blocks(int64_t H, int64_t work, int64_t threads) {
  constexpr int64_t kMinWork = int64_t{1} << 16;
  int64_t count = 1;
  if (threads > 1 && work >= kMinWork) count = std::max<int64_t>(1, std::min(threads, H / 16));
  Blocks blocks;
  blocks.begin.push_back(0);
  for (int64_t p = 1; p < count; ++p) {
    const int64_t edge = (H * p / count + 4) / 8 * 8;
    blocks.begin.push_back(std::max(blocks.begin.back(), std::min(edge, H)));
  }
  blocks.begin.push_back(H);
  return blocks;
}

// W (4H, F) with the rows of each block together: block p's rows are those of its neurons,
// gate by gate (i, f, g, o), a (4 size(p), F) matrix starting at row 4 begin[p]. With one
// block this is W itself.
inline at::Tensor rows_by_block(const at::Tensor& weight, const Blocks& blocks) {
  if (blocks.count() == 1) return weight;
  const int64_t H = weight.size(0) / 4;
  std::vector<at::Tensor> parts;
  for (int64_t p = 0; p < blocks.count(); ++p) {
    const at::Tensor rows = weight.view({4, H, -1}).narrow(1, blocks.begin[p], blocks.size(p));
    parts.push_back(rows.reshape({-1, weight.size(1)}));
  }
  return at::cat(parts).contiguous();
}

// Runs body(p) for every block, in one parallel region when there are several. The threads of
// the region get the caller's thread-local state (dispatch keys below autograd, inference mode,
// no autocast), so that ATen calls inside behave as in the calling thread, and flush
// subnormals as the caller does.
template <typename F>
void for_each_block(const Blocks& blocks, const F& body) {
  if (blocks.count() == 1) {
    body(int64_t{0});
    return;
  }
  const at::ThreadLocalState state;
  at::parallel_for(0, blocks.count(), 1, [&](int64_t begin, int64_t end) {
    at::ThreadLocalStateGuard guard(state);
    FlushSubnormals flush_here;
    for (int64_t p = begin; p < end; ++p) body(p);
  });
}

// for_each_block for bodies that call nothing of ATen (plain loops over raw pointers): they need
// none of the caller's thread-local state, whose capture and restore in every thread cost about
// a microsecond per region, a tenth of a sparse evaluation step at H=512. With OpenMP (the
// kernels' build on Linux) the region is OpenMP's own, on the threads ATen's regions use.
template <typename F>
void for_each_block_plain(const Blocks& blocks, const F& body) {
  const int64_t count = blocks.count();
  if (count == 1) {
    body(int64_t{0});
    return;
  }
#ifdef _OPENMP
#pragma omp parallel for num_threads(static_cast<int>(count)) schedule(static, 1)
  for (int64_t p = 0; p < count; ++p) {
    FlushSubnormals flush_here;
    body(p);
  }
#else
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    FlushSubnormals flush_here;
    for (int64_t p = begin; p < end; ++p) body(p);
  });
#endif
}

}  // namespace phased_lstm
