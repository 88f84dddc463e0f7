// The time gate of one neuron at one timestamp, shared by the sequence gate (time_gate.cpp)
// and the streaming step (stream.cpp), so that both compute the same k bit for bit.

#pragma once

#include <cmath>

namespace phased_lstm {

// Phase in [0, 1): the floor-mod of torch.remainder. fmod is a slow iterative libm call, so
// the quotient comes from a multiplication and the remainder from one fused multiply-add
// (a single rounding even for x ~ 1e6 and tau ~ 1), corrected into [0, tau).
inline double gate_phase(double x, double tau, double inv_tau) {
  const double q = std::floor(x * inv_tau);
  double m = std::fma(-q, tau, x);
  if (m < 0.0) {
    m += tau;
  } else if (m >= tau) {
    m -= tau;
  }
  const double phase = m * inv_tau;
  // Rounding can give 1 for a remainder just under tau: that phase is 1 - eps, i.e. 0.
  return phase >= 1.0 ? phase - 1.0 : phase;
}

// k from the phase: the rising and falling halves of the open phase, the leak when closed.
inline double gate_value(double phase, double r_on, double leak) {
  if (phase < r_on / 2) return 2 * phase / r_on;
  if (phase < r_on) return 2 - 2 * phase / r_on;
  return leak * phase;
}

}  // namespace phased_lstm
