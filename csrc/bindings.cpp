// The Python surface of engine._core, and nothing else: each binding maps one C++
// declaration. Implementations live beside this file.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "build_info.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "bakeoff's native core over llama.cpp (see engine/_core.pyi)";
  m.attr("LLAMA_CPP_PYTHON_VERSION") = bakeoff::llama_cpp_python_version();
  m.attr("NATIVE_BUILD") = static_cast<bool>(BAKEOFF_NATIVE);

  py::class_<bakeoff::BackendDevice>(m, "BackendDevice")
      .def_readonly("name", &bakeoff::BackendDevice::name)
      .def_readonly("description", &bakeoff::BackendDevice::description)
      .def_readonly("type", &bakeoff::BackendDevice::type)
      .def_readonly("memory_free_bytes", &bakeoff::BackendDevice::memory_free_bytes)
      .def_readonly("memory_total_bytes", &bakeoff::BackendDevice::memory_total_bytes)
      .def("__repr__", [](const bakeoff::BackendDevice& d) {
        return "BackendDevice(name='" + d.name + "', type='" + d.type + "', description='" + d.description + "')";
      });

  m.def("system_info", &bakeoff::system_info, "llama.cpp's compile-time CPU features and backends.");
  m.def("supports_gpu_offload", &bakeoff::supports_gpu_offload, "True when the linked llama.cpp can offload layers.");
  m.def("supports_mmap", &bakeoff::supports_mmap, "True when models can be memory-mapped.");
  m.def("backend_devices", &bakeoff::backend_devices, "The ggml devices llama.cpp can run on.");
}
