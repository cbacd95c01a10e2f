"""One generation request, checked and made native: the prompt resolved, sampling options set,
adapters chosen, splices checked. ``Generator.generate`` and ``Generator.stream`` take the same
options (:class:`RequestOptions`), whose defaults live here, once."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Literal, TypedDict

from engine._native import core
from engine.errors import InputError
from engine.generation.splice import Splice
from engine.generation.types import (
    Message,
    Prompt,
    SamplingConfig,
    check_request,
    check_text,
    check_token_ids,
    is_token_ids,
)


class RequestOptions(TypedDict, total=False):
    """What one ``generate``/``stream`` call may set; every key is optional (its default in brackets).

    max_tokens: most tokens to generate, >= 1 [128].
    temperature, top_k, top_p, repeat_penalty: sampling [0.0, 40, 0.95, 1.0]; ``sampling`` overrides them.
    stop: strings that end generation; not part of the text [()].
    grammar: a GBNF grammar (rule ``root``) the output must follow [None].
    sampling: a whole :class:`SamplingConfig` [None].
    adapters: ``{name: scale}`` of loaded LoRA adapters, ``{}`` for none [None: the attached ones].
    truncate: "error" (ContextOverflowError when the prompt does not fit) or "left" (drop its oldest tokens) ["error"].
    reuse_prefix: reuse the K/V of the prefix shared with the previous request [True].
    splices: chunk states standing in for their prompt tokens, in prompt order [()].
    """

    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    repeat_penalty: float
    stop: Sequence[str]
    grammar: str | None
    sampling: SamplingConfig | None
    adapters: Mapping[str, float] | None
    truncate: Literal["error", "left"]
    reuse_prefix: bool
    splices: Sequence[Splice]


@dataclass
class Request:
    """A checked request, in the native core's terms."""

    prompt: str | list[int]  # text to tokenize, or token ids used as they are
    max_tokens: int
    sampling: core.SamplingOptions
    stop: list[str]
    adapters: list[tuple[core.LoraAdapter, float]]
    truncate_left: bool
    reuse_prefix: bool = True
    splices: tuple[Splice, ...] = ()


def build_request(prompt: Prompt, *, n_vocab: int, seed: int, format_chat: Callable[[Sequence[Message]], str],
                  resolve_adapters: Callable[[Mapping[str, float] | None], list[tuple[core.LoraAdapter, float]]],
                  max_tokens: int = 128, temperature: float = 0.0, top_k: int = 40, top_p: float = 0.95,
                  repeat_penalty: float = 1.0, stop: Sequence[str] = (), grammar: str | None = None,
                  sampling: SamplingConfig | None = None, adapters: Mapping[str, float] | None = None,
                  truncate: Literal["error", "left"] = "error", reuse_prefix: bool = True,
                  splices: Sequence[Splice] = ()) -> Request:
    """Check one request's options (see :class:`RequestOptions`) and make it native.

    Args:
        prompt: text, chat messages (rendered with ``format_chat``) or token ids.
        n_vocab: the model's vocabulary size (token ids are checked against it).
        seed: the generator's seed, used when ``sampling`` names none.
        format_chat: the model's chat template.
        resolve_adapters: the generator's adapter choice (:meth:`Adapters.resolve`).
    """
    if sampling is None:
        sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, repeat_penalty=repeat_penalty)
    stops = check_request(max_tokens, sampling, stop, grammar, truncate)
    if isinstance(prompt, str):
        native_prompt: str | list[int] = check_text(prompt, "prompt")
    elif is_token_ids(prompt):
        native_prompt = check_token_ids(prompt, n_vocab, "prompt")
    else:
        native_prompt = format_chat(prompt)  # type: ignore[arg-type]  # messages: checked by format_chat
    options = core.SamplingOptions()
    for f in fields(SamplingConfig):
        if f.name != "seed":
            setattr(options, f.name, getattr(sampling, f.name))
    options.seed = seed if sampling.seed is None else sampling.seed
    options.grammar = grammar or ""
    chosen = tuple(splices)
    if chosen and (isinstance(native_prompt, str) or not all(isinstance(s, Splice) for s in chosen)):
        raise InputError("splices= takes engine.Splice values and a prompt of token ids (the splices name "
                         "token positions)")
    return Request(native_prompt, max_tokens, options, stops, resolve_adapters(adapters), truncate == "left",
                   bool(reuse_prefix), chosen)
