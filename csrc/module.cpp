// The pybind11 module weightkit._C: build facts only. Tensors never cross here; ops are reached
// through torch.ops.weightkit.*, which this library registers when it is loaded.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "common/cpu_features.h"

namespace py = pybind11;

namespace {

py::dict build_info() {
  using namespace weightkit;
  py::dict info;
  info["version"] = WEIGHTKIT_VERSION;
  info["torch_version"] = WEIGHTKIT_TORCH_VERSION;
#ifdef WEIGHTKIT_WITH_CUDA
  info["cuda"] = true;
  info["cuda_version"] = WEIGHTKIT_CUDA_VERSION;
  info["cuda_archs"] = std::string(WEIGHTKIT_CUDA_ARCHS);
#else
  info["cuda"] = false;
  info["cuda_version"] = py::none();
  info["cuda_archs"] = std::string();
#endif
  info["cpu_isa_compiled"] = py::make_tuple("scalar", "avx2", "avx512");
  info["cpu_isa_best"] = isa_name(best_cpu_isa());
  const auto& f = cpu_features();
  py::dict feats;
  feats["avx2_fma_f16c"] = f.avx2;
  feats["avx512"] = f.avx512;
  feats["avx512_bf16"] = f.avx512_bf16;
  feats["avx512_vbmi"] = f.avx512_vbmi;
  feats["avx512_vbmi2"] = f.avx512_vbmi2;
  feats["avx512_vnni"] = f.avx512_vnni;
  feats["amx_bf16"] = f.amx_bf16;
  info["cpu_features"] = feats;
  info["cpu_fast_bf16"] = cpu_has_fast_bf16();
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "weightkit compiled core (ops register under torch.ops.weightkit)";
  m.def("build_info", &build_info, "What this build of weightkit contains and what the CPU offers.");
  m.def("cpu_isa", [](const std::string& op) { return std::string(weightkit::isa_name(weightkit::selected_cpu_isa(op.c_str()))); },
        py::arg("op") = "cpu_isa", "The SIMD path the CPU kernels take now (honours WEIGHTKIT_CPU_ISA).");
}
