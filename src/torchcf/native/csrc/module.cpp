// Python bindings of torchcf's compiled training kernels: one extension module, one translation
// unit (the kernels are included, so torch's headers are parsed once: the first build is ~2x
// shorter than compiling each file on its own). What crosses is named: small structs with
// keyword constructors and the optimizer as an enum (torchcf.training.steps builds them).
#include "dot_adam.cpp"
#include "ials_cg.cpp"
#include "spmm.cpp"
#include "tower_adam.cpp"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using torch::Tensor;
  py::class_<Buffers>(m, "Buffers")
      .def(py::init([](Tensor flat, Tensor grad, Tensor exp_avg, Tensor exp_avg_sqrt,
                       Tensor steps) {
             return Buffers{flat, grad, exp_avg, exp_avg_sqrt, steps};
           }),
           py::arg("flat"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sqrt"),
           py::arg("steps"));
  py::class_<Batches>(m, "Batches")
      .def(py::init([](Tensor users, Tensor items, Tensor labels, Tensor order, Tensor logits,
                       int64_t batch_size) {
             return Batches{users, items, labels, order, logits, batch_size};
           }),
           py::arg("users"), py::arg("items"), py::arg("labels"), py::arg("order"),
           py::arg("logits"), py::arg("batch_size"));
  py::class_<AdamSettings>(m, "AdamSettings")
      .def(py::init([](double lr, double beta1, double beta2, double eps, double weight_decay) {
             return AdamSettings{lr, beta1, beta2, eps, weight_decay};
           }),
           py::arg("lr"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
           py::arg("weight_decay"));
  py::class_<DotShape>(m, "DotShape")
      .def(py::init([](int64_t num_users, int64_t num_rows, int64_t dim, bool has_head) {
             return DotShape{num_users, num_rows, dim, has_head};
           }),
           py::arg("num_users"), py::arg("num_rows"), py::arg("dim"), py::arg("has_head"));
  py::class_<TowerShape>(m, "TowerShape")
      .def(py::init([](int64_t num_users, int64_t num_items, int64_t gmf_dim, int64_t width,
                       std::vector<int64_t> layer_widths) {
             return TowerShape{num_users, num_items, gmf_dim, width, layer_widths};
           }),
           py::arg("num_users"), py::arg("num_items"), py::arg("gmf_dim"), py::arg("width"),
           py::arg("layer_widths"));
  py::class_<DropoutSettings>(m, "DropoutSettings")
      .def(py::init([](int64_t threshold, double scale, int64_t seed) {
             return DropoutSettings{threshold, scale, seed};
           }),
           py::arg("threshold"), py::arg("scale"), py::arg("seed"));
  py::enum_<Optimizer>(m, "Optimizer")
      .value("adam", Optimizer::kAdam)
      .value("lazy_adam", Optimizer::kLazyAdam)
      .value("sgd", Optimizer::kSgd);
  m.def("dot_adam_batches", &dot_adam_batches, "exact BCE + Adam steps for MF/GMF",
        py::call_guard<py::gil_scoped_release>());
  m.def("tower_adam_batches", &tower_adam_batches, "BCE + Adam or SGD steps for MLP/NeuMF",
        py::call_guard<py::gil_scoped_release>());
  m.def("ials_cg", &ials_cg, "iALS conjugate-gradient steps on every row, in place",
        py::arg("target"), py::arg("fixed"), py::arg("gram"), py::arg("indptr"),
        py::arg("indices"), py::arg("reg"), py::arg("steps"),
        py::call_guard<py::gil_scoped_release>());
  m.def("dropout_keep", &dropout_keep, "the tower kernel's dropout factors for one layer/step");
  m.def("csr_spmm", &csr_spmm, "A x for a CSR A and a dense x, rows in parallel",
        py::arg("indptr"), py::arg("indices"), py::arg("values"), py::arg("x"),
        py::call_guard<py::gil_scoped_release>());
}
