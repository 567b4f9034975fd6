// The Python module `dp_fast._C` and the `dp_fast` operator library.
//
// The module itself exports nothing: importing it runs the static registrations in every source
// file of the extension (TORCH_LIBRARY / TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL), after which
// the ops are reachable as torch.ops.dp_fast.<name>. Not using pybind11 (torch/extension.h) keeps
// each translation unit's compile time at a few seconds.
//
// Each op file defines its own schema with TORCH_LIBRARY_FRAGMENT(dp_fast, m) next to its CPU
// kernel, so that adding an op touches only that op's files.

#include <Python.h>
#include <torch/library.h>

#include <string>

// Written by setup.py / CMakeLists.txt into the build tree: versions, CUDA on/off, archs.
#if __has_include("dp_fast_build_config.h")
#include "dp_fast_build_config.h"
#endif
#ifndef DP_FAST_TORCH_VERSION
#define DP_FAST_TORCH_VERSION "unknown"
#endif
#ifndef DP_FAST_CUDA_VERSION
#define DP_FAST_CUDA_VERSION ""
#endif
#ifndef DP_FAST_CUDA_ARCHS
#define DP_FAST_CUDA_ARCHS ""
#endif

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "dp_fast C++/CUDA operators; use them through torch.ops.dp_fast",
      -1,
      nullptr,
  };
  return PyModule_Create(&module_def);
}

namespace dp_fast {

// "key=value;key=value": what this binary was built with. Parsed by dp_fast._ext.build_info().
std::string build_info() {
  std::string s = "cpu=1";
#ifdef DP_FAST_WITH_CUDA
  s += ";cuda=1";
#else
  s += ";cuda=0";
#endif
#ifdef _OPENMP
  s += ";openmp=1";
#else
  s += ";openmp=0";
#endif
  s += ";torch=" DP_FAST_TORCH_VERSION;
  s += ";cuda_version=" DP_FAST_CUDA_VERSION;
  s += ";cuda_archs=" DP_FAST_CUDA_ARCHS;
  return s;
}

}  // namespace dp_fast

TORCH_LIBRARY(dp_fast, m) {
  m.def("build_info() -> str", &dp_fast::build_info);
}
