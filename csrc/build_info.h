#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace bakeoff {

struct BackendDevice {
  std::string name;
  std::string description;
  std::string type;  // "cpu", "gpu", "accel" or "other"
  size_t memory_free_bytes = 0;
  size_t memory_total_bytes = 0;
};

std::string llama_cpp_python_version();
std::string system_info();
bool supports_gpu_offload();
bool supports_mmap();
std::vector<BackendDevice> backend_devices();

}  // namespace bakeoff
