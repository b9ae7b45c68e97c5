// Python bindings of torchcf's compiled training kernels: one extension module, one translation
// unit (the kernels are included, so torch's headers are parsed once: the first build is ~2x
// shorter than compiling each file on its own).
#include "dot_adam.cpp"
#include "tower_adam.cpp"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dot_adam_batches", &dot_adam_batches, "exact BCE + Adam steps for MF/GMF",
        py::call_guard<py::gil_scoped_release>());
  m.def("tower_adam_batches", &tower_adam_batches, "BCE + Adam or SGD steps for MLP/NeuMF",
        py::call_guard<py::gil_scoped_release>());
  m.def("dropout_keep", &dropout_keep, "the tower kernel's dropout factors for one layer/step");
}
