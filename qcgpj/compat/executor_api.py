"""QCG-PilotJob's executor API (``qcg.pilotjob.executor_api``), as EasyVVUQ uses it: a
``concurrent.futures.Executor`` whose ``submit`` fills a job-description template."""
from __future__ import annotations

import ast
import concurrent.futures
import logging
import string
import textwrap
import uuid
from typing import Any, Callable

import redis

from ..errors import ArgumentError, JobSpecError, QcgpjError, TemplateKeyError
from ..errors import TimeoutError as QcgpjTimeout
from ..fieldcheck import _show
from .api import FINAL, Jobs, LocalManager, Manager, qcg_nodes
from .templates import BasicTemplate, QCGPJTemplate

__all__ = ["QCGPJExecutor", "QCGPJFuture", "QCGPJTemplate", "BasicTemplate", "FutureTimeout"]

log = logging.getLogger(__name__)


class FutureTimeout(QcgpjTimeout, concurrent.futures.TimeoutError):
    """``result(timeout)`` ran out: a qcgpj error, and the one a ``concurrent.futures`` caller catches."""


class QCGPJFuture:
    """The jobs of one ``submit``: ``result()`` waits and returns their final states by name."""

    def __init__(self, ids: list[str], qcgpjm: Manager) -> None:
        self.ids, self.qcgpjm = ids, qcgpjm
        self._done = self._cancelled = False

    def result(self, timeout: float | None = None) -> dict[str, str | None]:
        """QCG-PilotJob ignores ``timeout``; here it raises :class:`FutureTimeout`, as a Future's result does."""
        try:
            return self.qcgpjm.wait4(self.ids, timeout=timeout)
        except QcgpjTimeout as exc:
            raise FutureTimeout(str(exc)) from None

    def done(self) -> bool:
        if not self._done:
            self._done = all(st in FINAL for st in self.qcgpjm.m.status(self.ids).values())
        return self._done

    def running(self) -> bool:
        return not self.done()

    def cancel(self) -> bool:
        if not self._cancelled:
            self.qcgpjm.cancel(self.ids)
            self._cancelled = True
        return True

    def cancelled(self) -> bool:
        return self._cancelled


class QCGPJExecutor(concurrent.futures.Executor):
    """Local mode on ``resources`` (QCG-PilotJob's ``--nodes``, e.g. "n0:4") under ``wd``; with ``redis_url``,
    the jobs go to that queue's executors instead. ``reserve_core``, ``enable_rt_stats``, ``wrapper_rt_stats``
    and ``log_level`` are accepted for compatibility: qcgpj's executor needs no core of its own. ``namespace``: the
    queue's namespace (its workers' ``-n``), on a Redis that holds several campaigns.

    ``prefix`` goes before every job name (and ``after`` name) submitted. A queue outlives one client, and
    EasyVVUQ names its runs 1, 2, 3... in every campaign, so on a queue the default is a prefix of this executor's
    own (8 hex digits and '-'); the futures' names and ``QCG_PM_EXEC_API_JOB_ID`` carry it. Local mode has a
    private queue: no prefix, the names as given.

    ``shutdown()`` (also the end of a ``with`` block) ends what this executor submitted and is not final, as
    QCG-PilotJob's does: in local mode with its services, on a queue by canceling those jobs (others' stay)."""

    def __init__(self, wd: str = ".", resources: str | None = None, reserve_core: bool = False,
                 enable_rt_stats: bool = False, wrapper_rt_stats: str | None = None, log_level: str = "info",
                 *other_args: str, redis_url: str | None = None, prefix: str | None = None,
                 namespace: str = "default") -> None:
        if redis_url is not None:
            # its jobs' ends only: telling the others' (other campaigns') would read them all when made
            self._qcgpjm: Manager = Manager(redis_url, namespace=namespace, ends_of="own")
            self.prefix = f"{uuid.uuid4().hex[:8]}-" if prefix is None else prefix
        else:
            self.prefix = prefix or ""
            args = ["--wd", wd] + (["--nodes", qcg_nodes(str(resources))] if resources else []) + list(other_args)
            self._qcgpjm = LocalManager(args)
        self._remote = redis_url is not None
        self._submitted: list[str] = []   # on a queue, what shutdown() cancels if not final
        self.finished = False

    def __enter__(self) -> QCGPJExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def shutdown(self, wait: bool = True, **_kw: Any) -> None:
        if not self.finished:
            if self._remote:
                self._cancel_open()
            self._qcgpjm.finish()
            self.finished = True

    def _cancel_open(self) -> None:
        """On a queue, cancel this executor's jobs not final yet: nothing else can collect them once it is gone
        (its futures and prefix are), so a campaign that ended early (an error, Ctrl-C) would leave them to run on
        the queue's workers. A failure is logged, not raised: shutdown often runs while an error is on its way."""
        if not self._submitted:
            return
        try:
            states = self._qcgpjm.m.store.states(self._submitted)   # None: removed since (it was final)
            open_ = [n for n, st in states.items() if st is not None and st not in FINAL]
            if open_:
                self._qcgpjm.m.cancel(open_)
                log.info("QCGPJExecutor: shutdown canceled %d job(s) not final", len(open_))
        except (QcgpjError, redis.RedisError) as exc:
            log.warning("QCGPJExecutor: shutdown could not cancel its jobs not final: %s", exc)

    def submit(self, fn: Callable[[], Any], *args: dict | None, **kwargs: Any) -> QCGPJFuture:  # type: ignore[override]
        """``fn()`` gives the template (and defaults); ``args`` (dicts) override the defaults and ``kwargs``
        override both. The filled template is a Python literal of one job description."""
        text, defaults = _template(fn)
        values = dict(defaults)
        for i, a in enumerate(args):
            if a is not None and not isinstance(a, dict):   # else dict.update's TypeError, or a silent misuse
                raise ArgumentError(f"QCGPJExecutor.submit: argument {i + 1} after the template must be a dict of "
                                    f"its values (or None), got {_show(a)}")
            if a is not None:
                values.update(a)
        values.update(kwargs)
        try:
            filled = string.Template(textwrap.dedent(text)).substitute(values)
        except KeyError as exc:
            raise TemplateKeyError(values.get("name"), None, f"template placeholder ${{{exc.args[0]}}} has no value") \
                from None
        except ValueError as exc:
            raise JobSpecError(values.get("name"), None, f"template: {exc}") from None
        try:
            desc = ast.literal_eval(filled)
        except (ValueError, SyntaxError) as exc:
            raise JobSpecError(values.get("name"), None, f"the filled template is not a Python literal: {exc}") \
                from None
        if not isinstance(desc, dict) or not isinstance(desc.get("execution"), dict):
            raise JobSpecError(values.get("name"), "execution", "the filled template must be one job description")
        desc["execution"].setdefault("env", {})["QCG_PM_EXEC_API_JOB_ID"] = "${jname}"
        if self.prefix:
            desc["name"] = f"{self.prefix}{desc.get('name', '')}"
            after = (desc.get("dependencies") or {}).get("after")
            if isinstance(after, list):
                desc["dependencies"]["after"] = [f"{self.prefix}{n}" for n in after]
        ids = self._qcgpjm.submit(Jobs().add_std(desc))
        if self._remote:
            self._submitted += ids
        return QCGPJFuture(ids, self._qcgpjm)

    @property
    def qcgpj_manager(self) -> Manager:
        return self._qcgpjm


def _template(fn: Any) -> tuple[str, dict[str, Any]]:
    """The text and defaults ``fn()`` gives, checked first: a mistyped argument (``submit(5)``, a template class
    instead of its ``template``) was a TypeError from deep inside ``submit``, not saying which argument."""
    if not callable(fn):
        raise ArgumentError(f"QCGPJExecutor.submit: the first argument must be a template function (such as "
                            f"BasicTemplate.template) returning the template text and its defaults, got {_show(fn)}")
    template = fn()
    text, defaults = template if isinstance(template, tuple) and len(template) == 2 else (template, {})
    if not isinstance(text, str) or not isinstance(defaults, dict):
        raise ArgumentError(f"QCGPJExecutor.submit: the template function {getattr(fn, '__qualname__', fn)!r} must "
                            f"return the template text, or (text, dict of defaults), got {_show(template)}")
    return text, defaults
