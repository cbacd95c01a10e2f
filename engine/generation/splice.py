"""A chunk's K/V spliced into a prompt instead of being evaluated (see ``Generator.chunk_state``).

llama.cpp's sequence state of a chunk, computed once after a shared prefix, is
moved to where the chunk lands in the prompt (its cells' positions changed and its
keys re-rotated, RoPE being a rotation: csrc/state_shift.h), restored into a scratch
sequence and joined to the request's sequence; only the tokens between
and after the chunks are evaluated. A spliced chunk attends to the shared prefix and
itself, not to the chunks before it: that is the accuracy price, measured by
``bakeoff compare`` against a full prefill of the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Splice:
    """Prompt tokens ``[start, start + n_tokens)`` take their K/V from ``state``.

    ``state`` is what :meth:`engine.Generator.chunk_state` returned for those tokens
    (computed at positions ``[position, position + n_tokens)``, i.e. ``position`` is the
    length of the prefix it was computed after).
    """

    start: int
    state: bytes
    n_tokens: int
    position: int

    def native(self) -> tuple[int, bytes, int, int]:
        """The tuple ``engine._core.Session.generate(splices=...)`` takes."""
        return (self.start, self.state, self.n_tokens, self.position)


@dataclass(frozen=True)
class ComputedStates:
    """What :meth:`engine.Generator.chunk_states` computed: a state per chunk, in the order given."""

    states: tuple[bytes, ...]
    batches: int  # llama_decode calls
    groups: int  # groups of chunks evaluated together (one sequence each)
