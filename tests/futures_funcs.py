"""Functions the tests of qcgpj.Executor run as jobs: importable by name in the warm processes."""
from __future__ import annotations

import ctypes
import os
import sys
import time


class NotImportableHere(Exception):
    """Raised by a call; the test hides this module from the client to see the fallback error."""


def square(x):
    return x * x


def add(a, b):
    return a + b


class OutOfRange(Exception):
    """An exception whose constructor takes more than a message, as many do (CalledProcessError, OSError...)."""

    def __init__(self, value, limit):
        super().__init__(value, limit)
        self.value, self.limit = value, limit


class Unbuildable(Exception):
    """Built from two arguments but holding one: neither pickle nor qcgpj can build it again."""

    def __init__(self, message, extra):
        super().__init__(message)
        self.extra = extra


def unbuildable():
    raise Unbuildable("no good", object())


def out_of_range(x):
    raise OutOfRange(x, 10)


def missing(key):
    return {}[key]


def fail(x):
    raise ValueError(f"bad value {x}")


def where():
    return {"cwd": os.getcwd(), "task": os.environ.get("QCGPJ_TASK"), "cores": os.environ.get("QCGPJ_CORES")}


def talk(text):
    print(text)
    print("to stderr", file=sys.stderr)
    return len(text)


def hang(pidfile):
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)


def segfault():
    ctypes.string_at(0)


def hard_exit(code):
    os._exit(code)


def leave(code):
    sys.exit(code)


def read_file(path):
    with open(path) as f:
        return f.read().strip()


def fnproc_file():
    return sys.modules["qcgpj.workers.fnproc"].__file__


def write_later(path, text):
    """Ends after its caller's script has reached its end (a call the script never waited for)."""
    time.sleep(0.5)
    with open(path, "w") as f:
        f.write(text)
    return text


def when_file(path, value):
    """Returns value once the file exists: the test decides when the call ends."""
    while not os.path.exists(path):
        time.sleep(0.05)
    return value


def when_told(started, go, value):
    """Says it started, then returns ``value`` once the file ``go`` exists (the test decides when it ends)."""
    with open(started, "w") as f:
        f.write(str(os.getpid()))
    while not os.path.exists(go):
        time.sleep(0.02)
    return value


class Unprintable(Exception):
    """An exception whose ``__str__`` fails (a message built from an attribute that is not there, say)."""

    def __str__(self):
        raise AttributeError("no message")


def unprintable():
    raise Unprintable()


def blob(n):
    """A result of n bytes (as JSON, plus its quotes)."""
    return "x" * n
