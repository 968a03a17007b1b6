"""Read pickled annotation files (RefCOCO's ``refs(unc).p``) without letting them run code.

Unpickling can call any importable function (``__reduce__``), so a downloaded pickle is as dangerous
as a downloaded script. The refs files hold only lists, dicts, strings and numbers, which pickle encodes
with opcodes that need no imports; every import request goes through ``find_class``, and we refuse all
of them except the builtin ``set`` / ``frozenset`` types (older protocols rebuild sets by calling them).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

# Python 2 pickles name the builtins module "__builtin__"; we see raw names because find_class is ours.
_BUILTIN_MODULES = frozenset({"builtins", "__builtin__"})
_ALLOWED = frozenset({"set", "frozenset"})


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something other than builtin containers and scalars."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        # Python 2 byte strings (refer's pickles were written by Python 2) decode as UTF-8 text.
        super().__init__(file, encoding="utf-8")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if module in _BUILTIN_MODULES and name in _ALLOWED:
            return {"set": set, "frozenset": frozenset}[name]
        raise UnsafePickleError(
            f"{self._source} asks to load {module}.{name}; only builtin containers (list, dict, tuple, set) "
            "and scalars are allowed in annotation pickles, because loading anything else could run code. "
            "The file is corrupt or not what it claims to be: download it again from its official source."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source} uses persistent ids ({pid!r}); annotation pickles never do.")


def safe_load(path: str | Path) -> Any:
    """Unpickle ``path`` allowing only builtin containers and scalars; raises UnsafePickleError otherwise."""
    path = Path(path)
    with path.open("rb") as f:
        return _RestrictedUnpickler(f, str(path)).load()


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Like ``safe_load`` for bytes in memory; ``source`` names them in errors."""
    return _RestrictedUnpickler(io.BytesIO(data), source).load()
