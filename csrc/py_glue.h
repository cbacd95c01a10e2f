#pragma once
// The Session calls that run Python while the native code works. Each converts its
// arguments under the GIL, then runs with the GIL released; the native callbacks it
// passes take the GIL back only for as long as they touch Python. Kept apart so that
// bindings.cpp stays a declaration of the Python surface.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "lora.h"
#include "session.h"

namespace bakeoff {

using AdapterArgs = std::vector<std::pair<std::shared_ptr<LoraAdapter>, float>>;
using PromptArg = std::variant<std::string, std::vector<llama_token>>;  // text, or token ids used as they are
// (start, state, n_tokens, position) of each Splice, in prompt order.
using SpliceArgs = std::vector<std::tuple<size_t, pybind11::bytes, int32_t, int32_t>>;

// Session.generate. on_piece(str) is called under the GIL for each piece. On the
// main thread (the only one CPython runs signal handlers on) the request runs the
// pending signal handlers every few milliseconds, so Ctrl-C raises KeyboardInterrupt.
Result generate_from_python(Session& session, const PromptArg& prompt, int32_t max_tokens,
                            const SamplingOptions& sampling, const std::vector<std::string>& stop,
                            const AdapterArgs& adapters, bool truncate_left, bool reuse_prefix,
                            std::shared_ptr<CancelToken> cancel, const std::optional<pybind11::function>& on_piece,
                            const SpliceArgs& splices, bool return_logits);

// Session.log_probs, with the same signal handling.
std::vector<double> log_probs_from_python(Session& session, const std::vector<llama_token>& context,
                                          const std::vector<llama_token>& continuation, const AdapterArgs& adapters);

// Session.chunk_state, with the same signal handling; the state comes back as bytes.
pybind11::bytes chunk_state_from_python(Session& session, const std::vector<llama_token>& prefix,
                                        const std::vector<llama_token>& chunk, const AdapterArgs& adapters);

// Session.prefix_state, with the same signal handling; the state comes back as bytes.
pybind11::bytes prefix_state_from_python(Session& session, const std::vector<llama_token>& prefix,
                                         const AdapterArgs& adapters);

// Session.chunk_states, with the same signal handling: (list of states as bytes, llama_decode
// calls, groups). `prefix_state` is read in place, with the GIL released (bytes are immutable).
pybind11::tuple chunk_states_from_python(Session& session, const std::vector<llama_token>& prefix,
                                         const pybind11::bytes& prefix_state,
                                         const std::vector<std::vector<llama_token>>& chunks,
                                         const AdapterArgs& adapters);

}  // namespace bakeoff
