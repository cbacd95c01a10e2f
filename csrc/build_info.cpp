// Build and hardware facts of the llama.cpp we link, exposed so that bench/ can
// record them beside every figure.
#include "build_info.h"

#include <llama.h>
#include <ggml-backend.h>

#include "model.h"

namespace bakeoff {

std::string llama_cpp_python_version() { return BAKEOFF_LLAMA_CPP_PYTHON_VERSION; }

std::string system_info() { return llama_print_system_info(); }

bool supports_gpu_offload() { return llama_supports_gpu_offload(); }

bool supports_mmap() { return llama_supports_mmap(); }

std::vector<BackendDevice> backend_devices() {
  backend_init_once();
  std::vector<BackendDevice> devices;
  for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
    ggml_backend_dev_t dev = ggml_backend_dev_get(i);
    BackendDevice info;
    info.name = ggml_backend_dev_name(dev);
    info.description = ggml_backend_dev_description(dev);
    switch (ggml_backend_dev_type(dev)) {
      case GGML_BACKEND_DEVICE_TYPE_CPU: info.type = "cpu"; break;
      case GGML_BACKEND_DEVICE_TYPE_GPU: info.type = "gpu"; break;
      case GGML_BACKEND_DEVICE_TYPE_ACCEL: info.type = "accel"; break;
      default: info.type = "other"; break;
    }
    size_t free = 0, total = 0;
    ggml_backend_dev_memory(dev, &free, &total);
    info.memory_free_bytes = free;
    info.memory_total_bytes = total;
    devices.push_back(std::move(info));
  }
  return devices;
}

}  // namespace bakeoff
