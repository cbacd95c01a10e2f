// The Python surface of engine._core, and nothing else: each binding maps one C++
// declaration. Implementations live beside this file; engine/_core.pyi documents it.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "build_info.h"
#include "errors.h"
#include "log.h"
#include "lora.h"
#include "model.h"
#include "py_glue.h"
#include "session.h"
#include "text.h"

namespace py = pybind11;
using namespace bakeoff;

namespace {

// C++ failures become the engine.errors classes (imported lazily: engine.errors is pure Python).
void translate_errors(std::exception_ptr p) {
  auto raise = [](const char* name, const std::exception& e) {
    py::object cls = py::module_::import("engine.errors").attr(name);
    // Messages quote llama.cpp's lines and file contents, which need not be UTF-8.
    PyErr_SetString(cls.ptr(), sanitize_utf8(e.what()).c_str());
  };
  try {
    if (p) std::rethrow_exception(p);
  } catch (const ModelLoadError& e) {
    raise("ModelError", e);
  } catch (const AdapterLoadError& e) {
    raise("AdapterError", e);
  } catch (const ContextOverflow& e) {
    raise("ContextOverflowError", e);
  } catch (const Cancelled& e) {
    raise("CancelledError", e);
  } catch (const Busy& e) {
    raise("GeneratorBusyError", e);
  } catch (const InvalidInput& e) {
    raise("InputError", e);
  } catch (const GenerationFailure& e) {
    raise("GenerationError", e);
  } catch (const Error& e) {
    raise("EngineError", e);
  }
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "bakeoff's native core over llama.cpp (see engine/_core.pyi)";
  m.attr("LLAMA_CPP_PYTHON_VERSION") = llama_cpp_python_version();
  m.attr("NATIVE_BUILD") = static_cast<bool>(BAKEOFF_NATIVE);
  m.attr("KV_TYPES") = py::tuple(py::cast(kv_type_names()));
  install_quiet_logger();
  py::register_exception_translator(&translate_errors);

  py::class_<BackendDevice>(m, "BackendDevice")
      .def_readonly("name", &BackendDevice::name)
      .def_readonly("description", &BackendDevice::description)
      .def_readonly("type", &BackendDevice::type)
      .def_readonly("memory_free_bytes", &BackendDevice::memory_free_bytes)
      .def_readonly("memory_total_bytes", &BackendDevice::memory_total_bytes)
      .def("__repr__", [](const BackendDevice& d) {
        return "BackendDevice(name='" + d.name + "', type='" + d.type + "', description='" + d.description + "')";
      });

  m.def("system_info", &system_info, "llama.cpp's compile-time CPU features and backends.");
  m.def("supports_gpu_offload", &supports_gpu_offload, "True when the linked llama.cpp can offload layers.");
  m.def("supports_mmap", &supports_mmap, "True when models can be memory-mapped.");
  m.def("backend_devices", &backend_devices, "The ggml devices llama.cpp can run on.");
  m.def("sanitize_utf8", [](const py::bytes& b) { return sanitize_utf8(std::string(b)); }, py::arg("data"),
        "Decode bytes as UTF-8, replacing invalid sequences with U+FFFD (as streamed text does).");

  py::class_<ModelInfo>(m, "ModelInfo")
      .def_readonly("path", &ModelInfo::path)
      .def_readonly("name", &ModelInfo::name)
      .def_readonly("architecture", &ModelInfo::architecture)
      .def_readonly("description", &ModelInfo::description)
      .def_readonly("quantization", &ModelInfo::quantization)
      .def_readonly("n_params", &ModelInfo::n_params)
      .def_readonly("size_bytes", &ModelInfo::size_bytes)
      .def_readonly("n_ctx_train", &ModelInfo::n_ctx_train)
      .def_readonly("n_layer", &ModelInfo::n_layer)
      .def_readonly("n_embd", &ModelInfo::n_embd)
      .def_readonly("n_vocab", &ModelInfo::n_vocab)
      .def_readonly("chat_template", &ModelInfo::chat_template)
      .def_readonly("n_gpu_layers_requested", &ModelInfo::n_gpu_layers_requested)
      .def_readonly("n_layers_offloaded", &ModelInfo::n_layers_offloaded)
      .def_readonly("extra_buffer_types", &ModelInfo::extra_buffer_types);

  py::class_<Model, std::shared_ptr<Model>>(m, "Model")
      .def(py::init([](const std::string& path, int32_t n_gpu_layers, bool use_mmap, bool use_extra_bufts) {
             py::gil_scoped_release release;
             return std::make_shared<Model>(path, ModelOptions{n_gpu_layers, use_mmap, use_extra_bufts});
           }),
           py::arg("path"), py::kw_only(), py::arg("n_gpu_layers") = 0, py::arg("use_mmap") = true,
           py::arg("use_extra_bufts") = true)
      .def_property_readonly("info", &Model::info, py::return_value_policy::reference_internal)
      .def("meta", &Model::meta, py::arg("key"))
      .def("tokenize", &Model::tokenize, py::arg("text"), py::kw_only(), py::arg("add_special") = true,
           py::arg("parse_special") = false)
      .def("detokenize",
           [](const Model& model, const std::vector<llama_token>& tokens, bool render_special) {
             return py::bytes(model.detokenize(tokens, render_special));
           },
           py::arg("tokens"), py::kw_only(), py::arg("render_special") = false)
      .def("apply_chat_template", &Model::apply_chat_template, py::arg("messages"), py::kw_only(),
           py::arg("add_assistant") = true, py::arg("template") = "")
      .def("__repr__", [](const Model& model) { return "Model(path='" + model.info().path + "')"; });

  py::class_<LoraAdapter, std::shared_ptr<LoraAdapter>>(m, "LoraAdapter")
      .def(py::init([](std::shared_ptr<Model> model, const std::string& path) {
             py::gil_scoped_release release;
             return std::make_shared<LoraAdapter>(std::move(model), path);
           }),
           py::arg("model"), py::arg("path"))
      .def_property_readonly("path", &LoraAdapter::path)
      .def_property_readonly("alpha", &LoraAdapter::alpha)
      .def("meta", &LoraAdapter::meta, py::arg("key"))
      .def_property_readonly("metadata", &LoraAdapter::metadata)
      .def("__repr__", [](const LoraAdapter& a) { return "LoraAdapter(path='" + a.path() + "')"; });

  py::class_<SamplingOptions>(m, "SamplingOptions")
      .def(py::init<>())
      .def_readwrite("temperature", &SamplingOptions::temperature)
      .def_readwrite("top_k", &SamplingOptions::top_k)
      .def_readwrite("top_p", &SamplingOptions::top_p)
      .def_readwrite("min_p", &SamplingOptions::min_p)
      .def_readwrite("repeat_penalty", &SamplingOptions::repeat_penalty)
      .def_readwrite("repeat_last_n", &SamplingOptions::repeat_last_n)
      .def_readwrite("seed", &SamplingOptions::seed)
      .def_readwrite("grammar", &SamplingOptions::grammar)
      .def_readwrite("ignore_eos", &SamplingOptions::ignore_eos);

  py::class_<Timings>(m, "Timings")
      .def_readonly("tokenize_ms", &Timings::tokenize_ms)
      .def_readonly("prompt_tokens", &Timings::prompt_tokens)
      .def_readonly("truncated_tokens", &Timings::truncated_tokens)
      .def_readonly("reused_tokens", &Timings::reused_tokens)
      .def_readonly("spliced_tokens", &Timings::spliced_tokens)
      .def_readonly("splice_ms", &Timings::splice_ms)
      .def_readonly("k_shifted_tokens", &Timings::k_shifted_tokens)
      .def_readonly("prefill_ms", &Timings::prefill_ms)
      .def_readonly("prefill_tokens", &Timings::prefill_tokens)
      .def_readonly("prefill_tokens_per_s", &Timings::prefill_tokens_per_s)
      .def_readonly("ttft_ms", &Timings::ttft_ms)
      .def_readonly("decode_ms", &Timings::decode_ms)
      .def_readonly("decode_tokens", &Timings::decode_tokens)
      .def_readonly("decode_tokens_per_s", &Timings::decode_tokens_per_s)
      .def_readonly("total_ms", &Timings::total_ms);

  py::class_<Result>(m, "Result")
      .def_readonly("text", &Result::text)
      .def_readonly("tokens", &Result::tokens)
      .def_readonly("stop_reason", &Result::stop_reason)
      .def_readonly("timings", &Result::timings)
      .def_readonly("logits", &Result::logits);

  py::class_<CancelToken, std::shared_ptr<CancelToken>>(m, "CancelToken")
      .def(py::init<>())
      .def("cancel", &CancelToken::cancel)
      .def_property_readonly("cancelled", &CancelToken::cancelled);

  const SessionOptions session_defaults;
  py::class_<Session>(m, "Session")
      .def(py::init([](std::shared_ptr<Model> model, uint32_t n_ctx, uint32_t n_batch, int32_t n_threads,
                       int32_t n_threads_batch, int32_t flash_attn, const std::string& kv_type, bool warmup,
                       uint32_t splice_slots, bool rotate_splices) {
             py::gil_scoped_release release;
             SessionOptions options{n_ctx, n_batch, n_threads, n_threads_batch, flash_attn, kv_type, warmup,
                                    splice_slots, rotate_splices};
             return std::make_unique<Session>(std::move(model), options);
           }),
           py::arg("model"), py::kw_only(), py::arg("n_ctx") = session_defaults.n_ctx,
           py::arg("n_batch") = session_defaults.n_batch, py::arg("n_threads") = session_defaults.n_threads,
           py::arg("n_threads_batch") = session_defaults.n_threads_batch,
           py::arg("flash_attn") = session_defaults.flash_attn, py::arg("kv_type") = session_defaults.kv_type,
           py::arg("warmup") = session_defaults.warmup, py::arg("splice_slots") = session_defaults.splice_slots,
           py::arg("rotate_splices") = session_defaults.rotate_splices)
      .def("generate", &generate_from_python, py::arg("prompt"), py::kw_only(), py::arg("max_tokens"),
           py::arg("sampling"), py::arg("stop") = std::vector<std::string>{}, py::arg("adapters") = AdapterArgs{},
           py::arg("truncate_left") = false, py::arg("reuse_prefix") = true, py::arg("cancel") = py::none(),
           py::arg("on_piece") = py::none(), py::arg("splices") = SpliceArgs{}, py::arg("return_logits") = false)
      .def("log_probs", &log_probs_from_python, py::arg("context"), py::arg("continuation"), py::kw_only(),
           py::arg("adapters") = AdapterArgs{})
      .def("chunk_state", &chunk_state_from_python, py::arg("prefix"), py::arg("chunk"), py::kw_only(),
           py::arg("adapters") = AdapterArgs{})
      .def("prefix_state", &prefix_state_from_python, py::arg("prefix"), py::kw_only(),
           py::arg("adapters") = AdapterArgs{})
      .def("chunk_states", &chunk_states_from_python, py::arg("prefix"), py::arg("prefix_state"), py::arg("chunks"),
           py::kw_only(), py::arg("adapters") = AdapterArgs{})
      .def("cancel", &Session::cancel)
      .def("reset", &Session::reset, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("n_ctx", &Session::n_ctx)
      .def_property_readonly("n_batch", &Session::n_batch)
      .def_property_readonly("splice_slots", [](const Session& s) { return s.options().splice_slots; })
      .def_property_readonly("splice_shift", &Session::splice_shift)
      .def_property_readonly("cached_tokens", &Session::cached_tokens);
}
