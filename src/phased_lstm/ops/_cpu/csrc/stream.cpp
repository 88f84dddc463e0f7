// The streaming step: a unidirectional stack of Phased LSTM layers advanced over a few events
// in one call, for inference (the Python module of the extension).
//
// Event by event, the sequence kernels cost more in set-up than in work: an input projection
// of all 4H rows, a gate tensor, a dispatch per op. Here one call does, for each event and each
// layer: the time gate of every neuron in float64 (the same function as the sequence kernel),
// and for the open neurons only (k != 0, about r_on of them at evaluation) their four rows of
// W_ih x + W_hh h + b and their update of h and c. Closed neurons are not touched: their state
// is kept bit for bit, as the reference does at evaluation.
//
// A Stream holds what the layer computes with, prepared once (float64 period, 1 / period,
// shift and r_on; the two biases summed) and the version counters and storage of the module's
// tensors it was prepared from: a call finds out in nanoseconds that a parameter changed
// (an optimiser step, load_state_dict, .to()) and answers NotImplemented, and Python prepares
// a new Stream. A call whose inputs the fast path does not take (another dtype or device,
// a tensor subclass, autocast, a gradient to record, ...) answers None, and the module runs its
// general path, which validates and reports errors.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "gate_math.h"
#include "lstm_math.h"

namespace py = pybind11;

namespace {

// The most (event, sample) pairs a call takes. The step computes each open (sample, neuron)
// pair as dot products; beyond a few dozen events the sequence kernels, which project the
// inputs of all steps with one matrix product and run dense steps where many neurons are open,
// are as fast or faster (measured on a 2-core x86 machine: at r_on = 0.2, H = 512 and 32
// samples of 4 events, 1.3x the sequence path's time; at 8 events of one sample, 0.04x).
constexpr int64_t kMaxEvents = 64;

using phased_lstm::dot4;
using phased_lstm::gate_phase;
using phased_lstm::gate_value;
using phased_lstm::update_one;

struct Layer {
  at::Tensor w_ih, w_hh, bias, w_ch;  // the parameters' dtype; bias and w_ch may be undefined
  std::vector<double> period, inv_period, shift, r_on;
  int64_t input_size = 0;
};

// A plain CPU tensor: no subclass, no Python or functorch dispatch, no lazy conjugate.
bool plain_tensor(PyObject* obj) {
  if (!THPVariable_CheckExact(obj)) return false;
  const at::Tensor& t = THPVariable_Unpack(obj);
  const c10::DispatchKeySet keys = t.key_set()
                                       .remove(c10::DispatchKey::ADInplaceOrView)
                                       .remove(c10::DispatchKey::AutogradCPU)
                                       .remove(c10::DispatchKey::AutocastCPU);
  return keys == c10::DispatchKeySet(c10::DispatchKey::CPU) && !t.requires_grad();
}

// Timestamps read as double whatever their dtype (float64 or float32), with their strides.
struct Times {
  const void* data = nullptr;
  bool is_double = true;
  int64_t step = 0, sample = 0;
  double operator()(int64_t t, int64_t n) const {
    const int64_t i = t * step + n * sample;
    return is_double ? static_cast<const double*>(data)[i]
                     : static_cast<double>(static_cast<const float*>(data)[i]);
  }
};

class Stream {
 public:
  Stream(const std::vector<at::Tensor>& w_ih, const std::vector<at::Tensor>& w_hh,
         const std::vector<std::optional<at::Tensor>>& bias,
         const std::vector<std::optional<at::Tensor>>& w_ch,
         const std::vector<at::Tensor>& period, const std::vector<at::Tensor>& shift,
         const std::vector<at::Tensor>& r_on, const std::vector<at::Tensor>& watch,
         bool batch_first)
      : batch_first_(batch_first) {
    TORCH_CHECK(!w_ih.empty(), "Stream: no layers");
    hidden_ = w_hh[0].size(1);
    dtype_ = w_hh[0].scalar_type();
    TORCH_CHECK(dtype_ == at::kFloat || dtype_ == at::kDouble, "Stream: float32 or float64");
    for (size_t l = 0; l < w_ih.size(); ++l) {
      Layer layer;
      layer.w_ih = w_ih[l].contiguous();
      layer.w_hh = w_hh[l].contiguous();
      if (bias[l].has_value()) layer.bias = bias[l]->contiguous();
      if (w_ch[l].has_value()) layer.w_ch = w_ch[l]->contiguous();
      layer.input_size = layer.w_ih.size(1);
      for (const auto* t : {&layer.w_ih, &layer.w_hh}) {
        TORCH_CHECK(t->scalar_type() == dtype_ && t->device().is_cpu(), "Stream: weights");
      }
      const auto to_vector = [](const at::Tensor& t) {
        const at::Tensor d = t.to(at::kDouble).contiguous();
        return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
      };
      layer.period = to_vector(period[l]);
      layer.shift = to_vector(shift[l]);
      layer.r_on = to_vector(r_on[l]);
      layer.inv_period.resize(layer.period.size());
      for (size_t j = 0; j < layer.period.size(); ++j) {
        layer.inv_period[j] = 1.0 / layer.period[j];
      }
      layers_.push_back(std::move(layer));
    }
    input_size_ = layers_[0].input_size;
    for (const auto& t : watch) {
      watch_.push_back(t);
      versions_.push_back(t.is_inference() ? 0 : t._version());
      pointers_.push_back(t.data_ptr());
    }
    scratch_.resize(static_cast<size_t>(hidden_) * sizeof(double));
    open_.resize(static_cast<size_t>(hidden_));
    k_.resize(static_cast<size_t>(hidden_));
  }

  // Whether the module's tensors are still those it was prepared from.
  bool fresh() const {
    for (size_t i = 0; i < watch_.size(); ++i) {
      const at::Tensor& t = watch_[i];
      if (t.data_ptr() != pointers_[i]) return false;
      if (!t.is_inference() && t._version() != versions_[i]) return false;
    }
    return true;
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

  // PhasedLSTM.forward(input, times, hx) without lengths: (output, (h_n, c_n)), or None.
  py::object layer(py::handle input, py::handle times, py::handle hx, double leak) {
    if (!fresh()) return not_implemented();
    if (!callable() || !plain_tensor(input.ptr()) || !plain_tensor(times.ptr())) {
      return py::none();
    }
    const at::Tensor& x = THPVariable_Unpack(input.ptr());
    const at::Tensor& t = THPVariable_Unpack(times.ptr());
    if (x.scalar_type() != dtype_ || (x.dim() != 2 && x.dim() != 3) ||
        x.size(-1) != input_size_ || x.numel() == 0) {
      return py::none();
    }
    const bool unbatched = x.dim() == 2;
    const int64_t L = unbatched ? x.size(0) : x.size(batch_first_ ? 1 : 0);
    const int64_t N = unbatched ? 1 : x.size(batch_first_ ? 0 : 1);
    if (L * N > kMaxEvents) return py::none();
    Times reader;
    if (!read_times(t, L, N, unbatched, batch_first_, reader)) return py::none();
    const int64_t layers = num_layers(), H = hidden_;
    at::Tensor h_n, c_n;
    if (!initial_state(hx, unbatched ? std::vector<int64_t>{layers, H}
                                     : std::vector<int64_t>{layers, N, H},
                       h_n, c_n)) {
      return py::none();
    }
    const at::Tensor xc = x.stride(-1) == 1 ? x : x.contiguous();
    int64_t xs_t, xs_n;
    if (unbatched) {
      xs_t = xc.stride(0);
      xs_n = 0;
    } else {
      xs_t = xc.stride(batch_first_ ? 1 : 0);
      xs_n = xc.stride(batch_first_ ? 0 : 1);
    }
    at::Tensor out = unbatched ? at::empty({L, H}, x.options())
                     : batch_first_ ? at::empty({N, L, H}, x.options())
                                    : at::empty({L, N, H}, x.options());
    const int64_t os_t = unbatched ? H : (batch_first_ ? H : N * H);
    const int64_t os_n = unbatched ? 0 : (batch_first_ ? L * H : H);
    run(xc, xs_t, xs_n, reader, h_n, c_n, out, os_t, os_n, L, N, leak);
    return py::make_tuple(out, py::make_tuple(h_n, c_n));
  }

  // PhasedLSTMCell.forward(x, t, hx): (h', c'), or None.
  py::object cell(py::handle input, py::handle time, py::handle hx, double leak) {
    if (!fresh()) return not_implemented();
    if (!callable() || !plain_tensor(input.ptr())) return py::none();
    const at::Tensor& x = THPVariable_Unpack(input.ptr());
    if (x.scalar_type() != dtype_ || (x.dim() != 1 && x.dim() != 2) ||
        x.size(-1) != input_size_ || x.numel() == 0) {
      return py::none();
    }
    const bool unbatched = x.dim() == 1;
    const int64_t N = unbatched ? 1 : x.size(0), H = hidden_;
    if (N > kMaxEvents) return py::none();
    Times reader;
    double scalar = 0.0;
    if (PyFloat_Check(time.ptr()) || (PyLong_Check(time.ptr()) && !PyBool_Check(time.ptr()))) {
      scalar = PyFloat_AsDouble(time.ptr());
      if (PyErr_Occurred()) {
        PyErr_Clear();
        return py::none();
      }
      if (!std::isfinite(scalar)) return py::none();
      reader.data = &scalar;
    } else {
      if (!plain_tensor(time.ptr())) return py::none();
      const at::Tensor& t = THPVariable_Unpack(time.ptr());
      if (t.dim() == 0) {
        if (!read_times(t.reshape({1}), 1, 1, true, false, reader)) return py::none();
      } else if (unbatched || !read_times(t.unsqueeze(0), 1, N, false, false, reader)) {
        return py::none();
      }
    }
    at::Tensor h, c;
    if (!initial_state(hx, unbatched ? std::vector<int64_t>{H} : std::vector<int64_t>{N, H}, h,
                       c)) {
      return py::none();
    }
    const at::Tensor xc = x.stride(-1) == 1 ? x : x.contiguous();
    // The cell's outputs are its new state: nothing else to write.
    run(xc, 0, unbatched ? 0 : xc.stride(0), reader, h, c, at::Tensor(), 0, 0, 1, N, leak);
    return py::make_tuple(h, c);
  }

  // One or more events into states `h`, `c` (num_layers, N, H) held by the caller and updated
  // in place: x (N, H_in) with t (N,) or a number, x (H_in,) for N = 1, or x (L, N, H_in) with
  // t (L, N). Returns the last layer's h after each event, (N, H), (H,) or (L, N, H); None if
  // the fast path cannot.
  py::object advance(py::handle input, py::handle times, const at::Tensor& h,
                     const at::Tensor& c, double leak) {
    if (!fresh()) return not_implemented();
    if (!callable() || !plain_tensor(input.ptr())) return py::none();
    const at::Tensor& x = THPVariable_Unpack(input.ptr());
    const int64_t layers = num_layers(), H = hidden_;
    if (x.scalar_type() != dtype_ || x.dim() < 1 || x.dim() > 3 || x.size(-1) != input_size_ ||
        x.numel() == 0) {
      return py::none();
    }
    const bool single = x.dim() == 1;  // one event of one sample
    const bool one = x.dim() <= 2;
    const int64_t L = one ? 1 : x.size(0), N = single ? 1 : x.size(one ? 0 : 1);
    if (L * N > kMaxEvents) return py::none();
    if (h.dim() != 3 || h.size(0) != layers || h.size(1) != N || h.size(2) != H ||
        !h.is_contiguous() || !c.is_contiguous() || c.sizes() != h.sizes() ||
        h.scalar_type() != dtype_ || c.scalar_type() != dtype_) {
      return py::none();
    }
    Times reader;
    double scalar = 0.0;
    if (PyFloat_Check(times.ptr()) || (PyLong_Check(times.ptr()) && !PyBool_Check(times.ptr()))) {
      scalar = PyFloat_AsDouble(times.ptr());
      if (PyErr_Occurred() || !std::isfinite(scalar) || !one) {
        PyErr_Clear();
        return py::none();
      }
      reader.data = &scalar;
    } else {
      if (!plain_tensor(times.ptr())) return py::none();
      const at::Tensor& t = THPVariable_Unpack(times.ptr());
      const at::Tensor steps = one ? (t.dim() == 0 ? t.expand({N}) : t).unsqueeze(0) : t;
      if (!read_times(steps, L, N, false, false, reader)) return py::none();
    }
    const at::Tensor xc = x.stride(-1) == 1 ? x : x.contiguous();
    at::Tensor out = single ? at::empty({H}, x.options())
                     : one  ? at::empty({N, H}, x.options())
                            : at::empty({L, N, H}, x.options());
    const int64_t xs_n = single ? 0 : xc.stride(one ? 0 : 1);
    run(xc, one ? 0 : xc.stride(0), xs_n, reader, h, c, out, N * H, H, L, N, leak);
    return py::cast(out);
  }

 private:
  static py::object not_implemented() {
    return py::reinterpret_borrow<py::object>(Py_NotImplemented);
  }

  // The fast path records no gradient and does not emulate autocast.
  static bool callable() {
    return !at::GradMode::is_enabled() && !at::autocast::is_autocast_enabled(at::kCPU);
  }

  // Timestamps of shape (L,) shared by the batch, (L,) unbatched, (L, N), or (N, L) with
  // `batch_first`; float64, or float32 for a single event (longer float32 runs take the general
  // path, which checks that float32 can resolve them). All finite.
  static bool read_times(const at::Tensor& t, int64_t L, int64_t N, bool unbatched,
                         bool batch_first, Times& reader) {
    if (!t.device().is_cpu()) return false;
    const auto dtype = t.scalar_type();
    if (dtype != at::kDouble && !(dtype == at::kFloat && L == 1)) return false;
    reader.data = t.data_ptr();
    reader.is_double = dtype == at::kDouble;
    if (unbatched || t.dim() == 1) {
      if (t.dim() != 1 || t.size(0) != L) return false;
      reader.step = t.stride(0);
      reader.sample = 0;
    } else {
      if (t.dim() != 2) return false;
      const int64_t dim_t = batch_first ? 1 : 0;
      if (t.size(dim_t) != L || t.size(1 - dim_t) != N) return false;
      reader.step = t.stride(dim_t);
      reader.sample = t.stride(1 - dim_t);
    }
    for (int64_t s = 0; s < L; ++s) {
      for (int64_t n = 0; n < N; ++n) {
        if (!std::isfinite(reader(s, n))) return false;
      }
    }
    return true;
  }

  // Fresh copies of hx (or zeros) of `shape`; false if hx is not what the fast path takes.
  bool initial_state(py::handle hx, const std::vector<int64_t>& shape, at::Tensor& h,
                     at::Tensor& c) {
    const auto options = at::TensorOptions().dtype(dtype_);
    if (hx.is_none()) {
      h = at::zeros(shape, options);
      c = at::zeros(shape, options);
      return true;
    }
    if (!(PyTuple_Check(hx.ptr()) || PyList_Check(hx.ptr())) || py::len(hx) != 2) return false;
    PyObject* pair[2] = {PySequence_GetItem(hx.ptr(), 0), PySequence_GetItem(hx.ptr(), 1)};
    bool ok = true;
    for (int i = 0; i < 2 && ok; ++i) {
      ok = plain_tensor(pair[i]);
      if (ok) {
        const at::Tensor& s = THPVariable_Unpack(pair[i]);
        ok = s.scalar_type() == dtype_ && s.sizes() == at::IntArrayRef(shape);
        if (ok) (i == 0 ? h : c) = s.clone(at::MemoryFormat::Contiguous);
      }
    }
    Py_XDECREF(pair[0]);
    Py_XDECREF(pair[1]);
    return ok;
  }

  void run(const at::Tensor& x, int64_t xs_t, int64_t xs_n, const Times& times,
           const at::Tensor& h, const at::Tensor& c, const at::Tensor& out, int64_t os_t, int64_t os_n, int64_t L,
           int64_t N, double leak) {
    phased_lstm::FlushSubnormals flush;
    AT_DISPATCH_FLOATING_TYPES(dtype_, "phased_lstm_stream", [&] {
      run_typed<scalar_t>(x.data_ptr<scalar_t>(), xs_t, xs_n, times, h.data_ptr<scalar_t>(),
                          c.data_ptr<scalar_t>(),
                          out.defined() ? out.data_ptr<scalar_t>() : nullptr, os_t, os_n, L, N,
                          leak);
    });
  }

  template <typename T>
  void run_typed(const T* x, int64_t xs_t, int64_t xs_n, const Times& times, T* h, T* c, T* out,
                 int64_t os_t, int64_t os_n, int64_t L, int64_t N, double leak) {
    const int64_t H = hidden_;
    const int64_t layers = num_layers();
    T* before = reinterpret_cast<T*>(scratch_.data());
    T* k = reinterpret_cast<T*>(k_.data());
    int64_t* open = open_.data();
    for (int64_t s = 0; s < L; ++s) {
      for (int64_t n = 0; n < N; ++n) {
        const double time = times(s, n);
        const T* input = x + s * xs_t + n * xs_n;
        T* h_layer = nullptr;
        for (int64_t l = 0; l < layers; ++l) {
          const Layer& layer = layers_[l];
          h_layer = h + (l * N + n) * H;
          T* c_layer = c + (l * N + n) * H;
          int64_t count = 0;
          for (int64_t j = 0; j < H; ++j) {
            const double phase = gate_phase(time - layer.shift[j], layer.period[j],
                                            layer.inv_period[j]);
            const T value = static_cast<T>(gate_value(phase, layer.r_on[j], leak));
            if (value != T(0)) {
              open[count] = j;
              k[count] = value;
              ++count;
            }
          }
          if (count > 0) {
            // Every open neuron reads h before the event; the updates go into h itself.
            std::memcpy(before, h_layer, sizeof(T) * H);
            const T* w_ih = layer.w_ih.data_ptr<T>();
            const T* w_hh = layer.w_hh.data_ptr<T>();
            const T* bias = layer.bias.defined() ? layer.bias.data_ptr<T>() : nullptr;
            const T* w_ch = layer.w_ch.defined() ? layer.w_ch.data_ptr<T>() : nullptr;
            const int64_t in = layer.input_size;
            // Threads only for a lot of work: a parallel region costs microseconds, more than
            // the few dozen open neurons of an event take (and much more on a busy machine).
            const int64_t work = 4 * (in + H) + 1;
            const int64_t grain = std::max<int64_t>(1, (1 << 18) / work);
            at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
              phased_lstm::FlushSubnormals flush_here;
              T pre[4], rec[4];
              for (int64_t q = begin; q < end; ++q) {
                const int64_t j = open[q];
                dot4(w_ih, H, in, j, input, pre);
                dot4(w_hh, H, H, j, before, rec);
                for (int64_t g = 0; g < 4; ++g) {
                  pre[g] = (bias != nullptr ? bias[g * H + j] + pre[g] : pre[g]) + rec[g];
                }
                update_one(pre, w_ch, H, j, k[q], c_layer[j], h_layer[j]);
              }
            });
          }
          input = h_layer;
        }
        if (out != nullptr) std::memcpy(out + s * os_t + n * os_n, h_layer, sizeof(T) * H);
      }
    }
  }

  std::vector<Layer> layers_;
  int64_t hidden_ = 0, input_size_ = 0;
  at::ScalarType dtype_ = at::kFloat;
  bool batch_first_ = false;
  std::vector<at::Tensor> watch_;
  std::vector<int64_t> versions_;
  std::vector<const void*> pointers_;
  std::vector<char> scratch_;
  std::vector<int64_t> open_;
  std::vector<double> k_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  py::class_<Stream>(m, "Stream")
      .def(py::init<const std::vector<at::Tensor>&, const std::vector<at::Tensor>&,
                    const std::vector<std::optional<at::Tensor>>&,
                    const std::vector<std::optional<at::Tensor>>&,
                    const std::vector<at::Tensor>&, const std::vector<at::Tensor>&,
                    const std::vector<at::Tensor>&, const std::vector<at::Tensor>&, bool>())
      .def("fresh", &Stream::fresh)
      .def("layer", &Stream::layer)
      .def("cell", &Stream::cell)
      .def("advance", &Stream::advance);
}
