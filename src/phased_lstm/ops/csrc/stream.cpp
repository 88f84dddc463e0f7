// The Python module of the extension (the kernels themselves are torch ops, registered by
// recurrence.cpp and time_gate.cpp).

#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {}
