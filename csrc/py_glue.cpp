#include "py_glue.h"

#include <chrono>
#include <string_view>

#include "errors.h"

namespace py = pybind11;

namespace bakeoff {
namespace {

// Taking the GIL can wait for another Python thread's switch interval; polling at
// most this often bounds what that costs decoding while Ctrl-C still acts at once.
constexpr auto kSignalPollInterval = std::chrono::milliseconds(5);

PieceCallback piece_callback(const std::optional<py::function>& fn) {
  if (!fn) return {};
  return [fn = *fn](const std::string& piece) {
    py::gil_scoped_acquire acquire;
    fn(py::str(piece));
  };
}

// Call with the GIL held. Empty off the main thread: PyErr_CheckSignals does
// nothing there, so taking the GIL for it would only cost.
StepCheck signal_check() {
  py::module_ threading = py::module_::import("threading");
  if (!threading.attr("current_thread")().is(threading.attr("main_thread")())) return {};
  using Clock = std::chrono::steady_clock;
  return [last = Clock::now()]() mutable {
    const auto now = Clock::now();
    if (now - last < kSignalPollInterval) return;
    last = now;
    py::gil_scoped_acquire acquire;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
  };
}

std::vector<AttachedAdapter> attached_adapters(const AdapterArgs& adapters) {
  std::vector<AttachedAdapter> out;
  for (const auto& [adapter, scale] : adapters) {
    if (!adapter) throw InvalidInput("adapter is None: pass a LoraAdapter");
    out.push_back({adapter, scale});
  }
  return out;
}

}  // namespace

Result generate_from_python(Session& session, const PromptArg& prompt, int32_t max_tokens,
                            const SamplingOptions& sampling, const std::vector<std::string>& stop,
                            const AdapterArgs& adapters, bool truncate_left, bool reuse_prefix,
                            std::shared_ptr<CancelToken> cancel, const std::optional<py::function>& on_piece,
                            const SpliceArgs& splices, bool return_logits) {
  Request request;
  if (const auto* text = std::get_if<std::string>(&prompt)) {
    request.prompt = *text;
  } else {
    request.prompt_tokens = std::get<std::vector<llama_token>>(prompt);
  }
  request.max_tokens = max_tokens;
  request.sampling = sampling;
  request.stop = stop;
  request.adapters = attached_adapters(adapters);
  request.truncate_left = truncate_left;
  request.reuse_prefix = reuse_prefix;
  request.cancel = std::move(cancel);
  request.return_logits = return_logits;
  // Each state is a view of its bytes object, read with the GIL released: bytes are
  // immutable, and `splices` holds a reference to each until this call has returned.
  for (const auto& [start, state, n_tokens, position] : splices) {
    request.splices.push_back({start, std::string_view(PyBytes_AS_STRING(state.ptr()), PyBytes_GET_SIZE(state.ptr())),
                               n_tokens, position});
  }
  const PieceCallback callback = piece_callback(on_piece);
  const StepCheck check = signal_check();
  py::gil_scoped_release release;
  return session.generate(request, callback, check);
}

std::vector<double> log_probs_from_python(Session& session, const std::vector<llama_token>& context,
                                          const std::vector<llama_token>& continuation, const AdapterArgs& adapters) {
  const std::vector<AttachedAdapter> attached = attached_adapters(adapters);
  const StepCheck check = signal_check();
  py::gil_scoped_release release;
  return session.log_probs(context, continuation, attached, check);
}

py::bytes chunk_state_from_python(Session& session, const std::vector<llama_token>& prefix,
                                  const std::vector<llama_token>& chunk, const AdapterArgs& adapters) {
  const std::vector<AttachedAdapter> attached = attached_adapters(adapters);
  const StepCheck check = signal_check();
  std::string state;
  {
    py::gil_scoped_release release;
    state = session.chunk_state(prefix, chunk, attached, check);
  }
  return py::bytes(state);
}

py::bytes prefix_state_from_python(Session& session, const std::vector<llama_token>& prefix,
                                   const AdapterArgs& adapters) {
  const std::vector<AttachedAdapter> attached = attached_adapters(adapters);
  const StepCheck check = signal_check();
  std::string state;
  {
    py::gil_scoped_release release;
    state = session.prefix_state(prefix, attached, check);
  }
  return py::bytes(state);
}

py::tuple chunk_states_from_python(Session& session, const std::vector<llama_token>& prefix,
                                   const py::bytes& prefix_state, const std::vector<std::vector<llama_token>>& chunks,
                                   const AdapterArgs& adapters) {
  const std::vector<AttachedAdapter> attached = attached_adapters(adapters);
  const StepCheck check = signal_check();
  const std::string_view prefix_view(PyBytes_AS_STRING(prefix_state.ptr()), PyBytes_GET_SIZE(prefix_state.ptr()));
  ChunkStateBatch computed;
  {
    py::gil_scoped_release release;
    computed = session.chunk_states(prefix, prefix_view, chunks, attached, check);
  }
  py::list states;
  for (const std::string& state : computed.states) states.append(py::bytes(state));
  return py::make_tuple(states, computed.batches, computed.groups);
}

}  // namespace bakeoff
