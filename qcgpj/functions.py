"""The hot scripts as one Redis function library (FUNCTION LOAD, Redis >= 7), called with FCALL.

An EVALSHA runs its whole chunk on every call: the key names and the ~70 shared functions of common.lua are
built again each time before the script's own work (about 30 µs of a chain hop's sync on an otherwise idle
server). A library runs its chunk once, at load; a call runs only the script's body. Where the server has no
functions, or an ACL denies them, the scripts stay EVALSHA (store.py), with the same Lua.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any

import redis

from .keys import lua_prelude_library

log = logging.getLogger(__name__)

LIBRARY_SCRIPTS = ("sync",)   # the per-round-trip scripts; the others run seldom enough to stay EVALSHA


def _library(load: Any) -> tuple[str, str]:
    """(library code, its tag): the tag, from the code's hash, names the library and its functions, so that two
    qcgpj versions sharing a server each call their own."""
    bodies = {name: load(name) for name in LIBRARY_SCRIPTS}
    head = lua_prelude_library() + load("common")
    tag = hashlib.sha1((head + "".join(bodies.values())).encode()).hexdigest()[:12]
    parts = [f"#!lua name=qcgpj_{tag}", head]
    for name, body in bodies.items():
        parts.append(f"redis.register_function('qcgpj_{tag}_{name}', function(KEYS, ARGV)\n"
                     f"set_keys(KEYS[1]); begin_call()\n{body}\nend)")
    return "\n".join(parts) + "\n", tag


class Library:
    """Whether this server takes our functions, loading them when it lost them (a restart, a fail-over to a
    replica that never had them, FUNCTION FLUSH)."""

    _code: str | None = None
    _tag = ""

    def __init__(self, load: Any) -> None:
        if Library._code is None:
            Library._code, Library._tag = _library(load)
        self.usable: bool | None = None   # None: not tried on this server yet

    def name(self, script: str) -> str:
        return f"qcgpj_{self._tag}_{script}"

    def ensure(self, node: redis.Redis) -> bool:
        """Load the library if it is not there; False (and EVALSHA from then on) where the server refuses, or
        where a library of our name holds other code (loaded by another user of a shared server: a script is
        named by its code's hash and cannot be so replaced, a function library only by the name it gives)."""
        try:
            node.execute_command("FUNCTION", "LOAD", self._code)
        except redis.OutOfMemoryError:
            return False   # this call goes by EVALSHA; the load is tried again on the next
        except redis.ResponseError as exc:
            if "already exists" not in str(exc) or not self._same_code(node):
                self._refused(exc)
                return False
        self.usable = True
        return True

    def _same_code(self, node: redis.Redis) -> bool:
        try:
            found = node.execute_command("FUNCTION", "LIST", "LIBRARYNAME", f"qcgpj_{self._tag}", "WITHCODE")
        except redis.ResponseError:
            return False
        for lib in found:
            fields = lib if isinstance(lib, dict) else dict(zip(lib[::2], lib[1::2]))
            if fields.get("library_name") == f"qcgpj_{self._tag}":
                return fields.get("library_code") == self._code
        return False

    def _refused(self, why: Any) -> None:
        if self.usable is None:
            log.info("Redis functions unavailable (%s): the scripts run with EVALSHA", why)
        self.usable = False
