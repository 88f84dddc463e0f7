// The Phased LSTM time gate in one pass over (L, N, H), forward and hand-written backward.
//
// In plain PyTorch the gate is a dozen full-size float64 tensor ops plus their autograd graph,
// which costs more than the whole fused recurrence. Here each element is computed once, in
// double, with the same floor-mod as torch.remainder, and the backward reduces straight into
// the (H,) gradients of period, shift and r_on.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "gate_math.h"
#include "lstm_math.h"

namespace {

using phased_lstm::gate_phase;
using phased_lstm::gate_value;

std::vector<double> inverse(const double* values, int64_t n) {
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[i] = 1.0 / values[i];
  return out;
}

template <typename scalar_t>
void forward_kernel(const double* times, const double* period, const double* shift,
                    const double* r_on, double leak, const bool* valid, scalar_t* k,
                    int64_t rows, int64_t hidden) {
  const std::vector<double> inv_period = inverse(period, hidden);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      scalar_t* out = k + row * hidden;
      if (valid != nullptr && !valid[row]) {
        for (int64_t h = 0; h < hidden; ++h) out[h] = scalar_t(0);
        continue;
      }
      const double t = times[row];
      for (int64_t h = 0; h < hidden; ++h) {
        const double phase = gate_phase(t - shift[h], period[h], inv_period[h]);
        out[h] = static_cast<scalar_t>(gate_value(phase, r_on[h], leak));
      }
    }
  });
}

// The gate's gradients of one row (one timestamp t), added to the (H,) sums of period, shift
// and r_on. Branch-free, so that the loop vectorises: every case is computed and one selected
// (a zero gradient adds zeros; the timestamps and parameters are finite). Not inlined, with
// restrict pointers: inside the parallel lambda the loop did not vectorise.
template <typename scalar_t>
PHASED_LSTM_NOINLINE void backward_row(const scalar_t* __restrict__ grad_k, double t,
                                       const double* __restrict__ period,
                                       const double* __restrict__ inv_period,
                                       const double* __restrict__ shift,
                                       const double* __restrict__ r_on, double leak,
                                       int64_t hidden, double* __restrict__ acc_period,
                                       double* __restrict__ acc_shift,
                                       double* __restrict__ acc_r_on) {
  for (int64_t h = 0; h < hidden; ++h) {
    const double g = static_cast<double>(grad_k[h]);
    const double tau = period[h];
    const double inv = inv_period[h];
    const double x = t - shift[h];
    const double phase = gate_phase(x, tau, inv);
    const double r = r_on[h];
    const bool rising = phase < r / 2;
    const bool open = phase < r;
    const double dk_dphase = open ? (rising ? 2 / r : -2 / r) : leak;
    const double dk_dr = open ? (rising ? -2.0 : 2.0) * phase / (r * r) : 0.0;
    // phase = (x - tau * floor(x / tau)) / tau, with d(x mod tau)/dtau = -floor(x / tau).
    const double dphase_dtau = (-std::floor(x * inv) - phase) * inv;
    const double gp = g * dk_dphase;
    acc_period[h] += gp * dphase_dtau;
    acc_shift[h] -= gp * inv;
    acc_r_on[h] += g * dk_dr;
  }
}

template <typename scalar_t>
void backward_kernel(const scalar_t* grad_k, const double* times, const double* period,
                     const double* shift, const double* r_on, double leak, const bool* valid,
                     int64_t rows, int64_t hidden, double* grad_period, double* grad_shift,
                     double* grad_r_on) {
  const std::vector<double> inv_period = inverse(period, hidden);
  const int threads = at::get_num_threads();
  // One (3, H) accumulator per thread, summed at the end: no atomics in the loop.
  std::vector<double> partial(static_cast<size_t>(threads) * 3 * hidden, 0.0);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    double* acc = partial.data() + static_cast<size_t>(at::get_thread_num()) * 3 * hidden;
    for (int64_t row = begin; row < end; ++row) {
      if (valid != nullptr && !valid[row]) continue;
      backward_row(grad_k + row * hidden, times[row], period, inv_period.data(), shift, r_on,
                   leak, hidden, acc, acc + hidden, acc + 2 * hidden);
    }
  });
  for (int thread = 0; thread < threads; ++thread) {
    const double* acc = partial.data() + static_cast<size_t>(thread) * 3 * hidden;
    for (int64_t h = 0; h < hidden; ++h) {
      grad_period[h] += acc[h];
      grad_shift[h] += acc[hidden + h];
      grad_r_on[h] += acc[2 * hidden + h];
    }
  }
}

void check_gate_args(const at::Tensor& times, const at::Tensor& period,
                     const at::Tensor& shift, const at::Tensor& r_on,
                     const c10::optional<at::Tensor>& valid) {
  TORCH_CHECK(times.scalar_type() == at::kDouble && times.is_contiguous(),
              "time_gate kernel: times must be contiguous float64");
  for (const auto* p : {&period, &shift, &r_on}) {
    TORCH_CHECK(p->scalar_type() == at::kDouble && p->is_contiguous() && p->dim() == 1,
                "time_gate kernel: gate parameters must be contiguous float64 (H,)");
    TORCH_CHECK(p->size(0) == period.size(0), "time_gate kernel: parameter sizes differ");
  }
  if (valid.has_value()) {
    TORCH_CHECK(valid->scalar_type() == at::kBool && valid->is_contiguous() &&
                    valid->numel() == times.numel(),
                "time_gate kernel: valid must be a contiguous bool tensor shaped like times");
  }
}

}  // namespace

at::Tensor time_gate_forward(const at::Tensor& times, const at::Tensor& period,
                                const at::Tensor& shift, const at::Tensor& r_on,
                                double leak, const c10::optional<at::Tensor>& valid,
                                c10::ScalarType dtype) {
  check_gate_args(times, period, shift, r_on, valid);
  const int64_t hidden = period.size(0);
  auto sizes = times.sizes().vec();
  sizes.push_back(hidden);
  auto k = at::empty(sizes, times.options().dtype(dtype));
  const bool* valid_ptr = valid.has_value() ? valid->data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "time_gate_forward", [&] {
    forward_kernel<scalar_t>(times.data_ptr<double>(), period.data_ptr<double>(),
                             shift.data_ptr<double>(), r_on.data_ptr<double>(), leak, valid_ptr,
                             k.data_ptr<scalar_t>(), times.numel(), hidden);
  });
  return k;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> time_gate_backward(
    const at::Tensor& grad_k, const at::Tensor& times, const at::Tensor& period,
    const at::Tensor& shift, const at::Tensor& r_on, double leak,
    const c10::optional<at::Tensor>& valid) {
  check_gate_args(times, period, shift, r_on, valid);
  const int64_t hidden = period.size(0);
  TORCH_CHECK(grad_k.is_contiguous() && grad_k.numel() == times.numel() * hidden,
              "time_gate kernel: grad_k must be contiguous (*, H)");
  auto grad_period = at::zeros_like(period);
  auto grad_shift = at::zeros_like(shift);
  auto grad_r_on = at::zeros_like(r_on);
  const bool* valid_ptr = valid.has_value() ? valid->data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_k.scalar_type(),
                                  "time_gate_backward", [&] {
    backward_kernel<scalar_t>(grad_k.data_ptr<scalar_t>(), times.data_ptr<double>(),
                              period.data_ptr<double>(), shift.data_ptr<double>(),
                              r_on.data_ptr<double>(), leak, valid_ptr, times.numel(), hidden,
                              grad_period.data_ptr<double>(), grad_shift.data_ptr<double>(),
                              grad_r_on.data_ptr<double>());
  });
  return {grad_period, grad_shift, grad_r_on};
}

// A fragment of the library that csrc/train.cpp defines: all the files build one extension.
TORCH_LIBRARY_FRAGMENT(phased_lstm, m) {
  m.def(
      "time_gate_forward(Tensor times, Tensor period, Tensor shift, Tensor r_on, float leak, "
      "Tensor? valid, ScalarType dtype) -> Tensor");
  m.def(
      "time_gate_backward(Tensor grad_k, Tensor times, Tensor period, Tensor shift, "
      "Tensor r_on, float leak, Tensor? valid) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(phased_lstm, CPU, m) {
  m.impl("time_gate_forward", &time_gate_forward);
  m.impl("time_gate_backward", &time_gate_backward);
}
