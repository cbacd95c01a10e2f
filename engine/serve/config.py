"""How a server is set up: what it loads, where it listens, and its limits."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError

#: Requests larger than this are refused with 413 before they are read (a question is
#: at most 16,000 characters: see ``protocol.MAX_MESSAGE_CHARS``).
MAX_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class ServeConfig:
    """A server's settings.

    Attributes:
        kb: knowledge base folder (None: the bundled set, indexed under ``work``).
        adapter: fine-tuned adapter (None: the one ``bakeoff run`` trained last under ``work``
            (``work/<profile>/adapter.gguf``), if any).
        work: ``bakeoff run``'s working folder, where the defaults are looked for.
        model: base GGUF (None: the model cache's).
        host, port: where to listen; port 0 picks a free one (printed when ready).
        api_key: bearer token every endpoint but ``/health`` and the page's static files
            requires; needed to listen beyond loopback.
        kv_cache: precomputed chunk states (``KB/kv``): adds the ``-spliced`` models.
        max_waiting: requests that may wait while one runs; one more gets 429.
        deadline_s: time a request may take from arrival to its last token.
        max_body_bytes: largest request body accepted.
        cors_origins: origins allowed to call the API from a browser (none by default).
        threads: generation threads (None: the Generator's default).
    """

    kb: Path | None = None
    adapter: Path | None = None
    work: Path = Path("bakeoff-run")
    model: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8800
    api_key: str | None = None
    kv_cache: bool = False
    max_waiting: int = 8
    deadline_s: float = 120.0
    max_body_bytes: int = MAX_BODY_BYTES
    cors_origins: tuple[str, ...] = ()
    threads: int | None = None

    def validate(self) -> None:
        """Raise :class:`InputError` for a setting that cannot be served safely.

        Listening beyond loopback without ``api_key`` is refused: anyone on the network
        could use the model and read the knowledge base.
        """
        if not is_loopback(self.host) and not self.api_key:
            raise InputError(f"--host {self.host} listens beyond this machine: give --api-key KEY too (clients send "
                             "it as 'Authorization: Bearer KEY'), or keep the default --host 127.0.0.1")
        if self.api_key is not None and (len(self.api_key) < 8 or not self.api_key.isprintable()
                                         or " " in self.api_key):
            raise InputError("--api-key must be at least 8 printable characters without spaces")
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port must be in 0..65535, got {self.port}")
        if not 1 <= self.max_waiting <= 1024:
            raise InputError(f"--queue must be 1..1024 waiting requests, got {self.max_waiting}")
        if not 1 <= self.deadline_s <= 3600:
            raise InputError(f"--deadline must be 1..3600 seconds, got {self.deadline_s}")


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_parts(config: ServeConfig, say: Callable[[str], None]) -> tuple[Path, Path | None]:
    """The knowledge base and adapter to serve: those given, else ``bakeoff run``'s (kb built if missing)."""
    kb = config.kb
    if kb is None:
        kb = config.work / "kb"
        from engine.kb.manifest import MANIFEST

        if not (kb / MANIFEST).exists():  # served as it is when there (it may hold another set's documents)
            from engine.kb import KnowledgeBase
            from engine.questions.qa import BUNDLED_SET

            say(f"indexing the bundled knowledge set into {kb} (once)")
            KnowledgeBase.build(BUNDLED_SET / "docs", kb).close()
    adapter = config.adapter
    if adapter is None:  # the adapter of the profile `bakeoff run` trained last
        found = [p for p in config.work.glob("*/adapter.gguf") if p.is_file()]
        adapter = max(found, key=lambda p: p.stat().st_mtime, default=None)
    return kb, adapter
