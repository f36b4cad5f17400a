"""QCG-PilotJob request files as a small program: every request is read and checked before any is applied (a
mistake anywhere in the file writes nothing), then the requests are applied in order against a Manager, each
``submit`` its own all-or-none batch, so a later request sees what the earlier ones did."""
from __future__ import annotations

import datetime
import json
import logging
import re
import string
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .errors import DuplicateJobError, JobSpecError, QcgpjError
from .fieldcheck import _known, _show
from .jobspec import LAUNCH_VARIABLES, SUBMIT_FIELDS, JobSpec, parse_job

if TYPE_CHECKING:
    from .manager import Manager

log = logging.getLogger(__name__)

NAMED = frozenset({"jobStatus", "jobInfo", "cancelJob", "removeJob"})   # requests about named jobs
ANSWERED = frozenset({"listJobs", "jobStatus", "jobInfo", "resourcesInfo", "status"})
IGNORED = frozenset({"notify", "register"})   # between QCG-PilotJob's own services; nothing to do in a file
SUBMIT_VARIABLES = ("rcnt", "uniq", "sname", "date", "time", "dateTime")
SUBMIT_RE = re.compile(r"\$(?:\$|\{?(?:%s)\b)" % "|".join(SUBMIT_VARIABLES))   # what substitution would change


@dataclass(slots=True)
class Request:
    kind: str
    where: str                                      # its place in the file, for messages: "[3]"
    jobs: list[JobSpec] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def parse_requests(text: str) -> list[Request]:
    """A request file: a list of requests, one request object, or a bare list of job descriptions (QCG-PilotJob's
    ``Jobs.save_to_file``; consecutive bare jobs form one batch)."""
    data = _json(text)
    if isinstance(data, dict) and "request" in data:
        data = [data]
    if not isinstance(data, list):
        raise JobSpecError(None, None, f"expected a list of requests or of job descriptions, got {_show(data)}")
    out: list[Request] = []
    rcnt = 0
    variables = SUBMIT_RE.search(text) is not None   # one scan; most large files have none
    i = 0
    while i < len(data):
        item, where = data[i], f"[{i}]"
        if isinstance(item, dict) and "request" in item:
            req = _request(item, where, rcnt + 1 if variables else 0)
            rcnt += req.kind == "submit"
            out.append(req)
            i += 1
            continue
        end = next((k for k in range(i, len(data)) if isinstance(data[k], dict) and "request" in data[k]), len(data))
        batch = data[i:end]   # consecutive bare jobs: one batch, a submit for the submit-time variables too
        if variables:
            rcnt += 1
            batch = substitute_submit(batch, where, rcnt)
        out.append(Request("jobs", where, [_job_at(x, f"[{i + k}]") for k, x in enumerate(batch)]))
        i = end
    _check_names(out)
    return out


def _check_names(requests: list[Request]) -> None:
    """A name submitted twice in one file is a mistake found before anything is written, unless a ``removeJob``
    between the two submits frees it (QCG-PilotJob's way of reusing a name)."""
    seen: set[str] = set()
    for req in requests:
        if req.kind == "removeJob":
            seen.difference_update(req.names)
        for job in req.jobs:
            if job.name in seen:
                raise DuplicateJobError(job.name, "name", f"submitted again at {req.where} of this file")
            seen.add(job.name)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobSpecError(None, None, f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise JobSpecError(None, None, "malformed JSON: nested too deeply") from None
    except ValueError as exc:   # a number of more than 4300 digits
        raise JobSpecError(None, None, f"malformed JSON: {exc}") from None


def _request(req: dict, where: str, rcnt: int) -> Request:
    """One request, checked; ``rcnt`` is its submit number, 0 when the file uses no submit-time variable."""
    kind = req["request"]
    if not isinstance(kind, str):
        raise JobSpecError(None, where + ".request", f"must be a request name, got {_show(kind)}")
    if kind == "submit":
        _known(None, req, SUBMIT_FIELDS, where)
        sub = req.get("jobs")
        if not isinstance(sub, list) or not sub:
            raise JobSpecError(None, where + ".jobs", "a submit request needs a non-empty list of jobs")
        if rcnt:
            sub = substitute_submit(sub, where, rcnt)
        return Request(kind, where, [_job_at(j, f"{where}.jobs[{k}]") for k, j in enumerate(sub)])
    if kind == "control":
        if req.get("command") != "finishAfterAllTasksDone":
            raise JobSpecError(None, where + ".command", f"unknown control command {req.get('command')!r} "
                                                         "(known: finishAfterAllTasksDone)")
        return Request(kind, where)
    if kind in NAMED:
        names = req.get("jobNames")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise JobSpecError(None, where + ".jobNames", f"'{kind}' needs a non-empty list of job names, "
                                                           f"got {_show(names)}")
        return Request(kind, where, names=names)
    if kind in ANSWERED or kind == "finish":
        return Request(kind, where)
    if kind in IGNORED:
        log.warning("request %s (%s) has no meaning in a qcgpj file and is ignored", where, kind)
        return Request(kind, where)
    raise JobSpecError(None, where + ".request", f"unknown request {kind!r}")


def substitute_submit(jobs: list, where: str, rcnt: int) -> list:
    """QCG-PilotJob's submit-time variables, in every string of the request's jobs: ``${rcnt}`` (this submit's
    number in the file, from 1), ``${uniq}`` (one UUID per request), ``${sname}`` ("local"), ``${date}``,
    ``${time}``, ``${dateTime}``; ``$$`` is a literal ``$``. Other ``${...}`` (``${it}``, a shell's ``${HOME}``)
    are left for launch. Done on the request's JSON text at once: one pass however many jobs it has."""
    text = json.dumps(jobs)
    if "$" not in text:
        return jobs
    now = datetime.datetime.now()
    values = {"rcnt": str(rcnt), "uniq": str(uuid.uuid4()), "sname": "local", "date": now.date().isoformat(),
              "time": now.time().isoformat(timespec="seconds"), "dateTime": now.isoformat(sep=" ")}
    return json.loads(string.Template(text).safe_substitute(values))


def _unknown_variable(name: str) -> str | None:
    """Why a name still holding ``${...}`` after substitution is refused, or None."""
    if "${" not in name:
        return None
    var = name[name.index("${"):].split("}")[0] + "}"
    why = " (a launch-time variable: an iterative job has one name, its iterations are NAME:N)" \
        if var[2:-1] in LAUNCH_VARIABLES else ""
    return f"unknown variable {var} in the name '{name}'{why}; a name may use " + \
        ", ".join("${%s}" % v for v in SUBMIT_VARIABLES)


def _job_at(item: Any, where: str) -> JobSpec:
    """parse_job, with the position in the file when the job has no usable name to point at."""
    try:
        return parse_job(item)
    except JobSpecError as exc:
        name = item.get("name") if isinstance(item, dict) else None
        why = _unknown_variable(name) if isinstance(name, str) else None
        if why is not None:
            raise JobSpecError(None, f"{where}.name", why) from None
        if exc.job is not None:
            raise
        fld = where if exc.field is None else f"{where}.{exc.field}"
        raise type(exc)(None, fld, exc.message) from None


def read_requests(path: str) -> list[Request]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise JobSpecError(None, None, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_requests(text)


# ---------------------------------------------------------------------- applying
Answer = Callable[[dict[str, Any]], None]


class Interpreter:
    """Applies requests in order to a Manager. ``names`` is what is still to wait for (submitted, not removed),
    ``submitted`` how many jobs the submits wrote; ``failed`` counts the other requests refused at run time (an unknown name, a job not final yet to remove):
    as in QCG-PilotJob, such a request gets an error answer and the next requests go on. A refused submit
    raises instead: the requests after it would act on jobs that do not exist."""

    def __init__(self, manager: Manager, answer: Answer) -> None:
        self.m = manager
        self.answer = answer
        self.names: dict[str, None] = {}
        self.submitted = 0
        self.failed = 0

    def run(self, requests: list[Request]) -> None:
        for req in requests:
            try:
                result = self.apply(req)
            except QcgpjError as exc:
                if req.jobs:
                    raise
                self.failed += 1
                self.answer({"request": req.kind, "where": req.where, "error": str(exc)})
                continue
            if result is not None:
                self.answer({"request": req.kind, "where": req.where, "data": result})

    def apply(self, req: Request) -> Any:
        m, kind = self.m, req.kind
        if kind in ("submit", "jobs"):
            for name in m.submit(req.jobs):
                self.names[name] = None
                self.submitted += 1
            return None
        if kind == "cancelJob":
            return m.cancel(req.names)
        if kind == "removeJob":
            removed = m.remove(req.names)
            for name in removed:
                self.names.pop(name, None)
            return {"removed": removed}
        if kind == "jobStatus":
            return m.status(req.names)
        if kind == "jobInfo":
            return {n: m.info(n) for n in req.names}
        if kind == "listJobs":
            return m.list()
        if kind == "resourcesInfo":
            res = m.resources()
            return {k: v for k, v in res.items() if k != "executors"}
        if kind == "status":
            states = m.list()
            counts: dict[str, int] = {}
            for st in states.values():
                counts[str(st)] = counts.get(str(st), 0) + 1
            return {"jobs": len(states), "states": counts, **{k: v for k, v in m.resources().items()
                                                               if k != "executors"}}
        return None   # control, finish, notify, register: the end of a run is waiting for its jobs anyway


def readable(answer: dict[str, Any]) -> str:
    """One line for a person: 'jobStatus [2]: a SUCCEED, b QUEUED'."""
    head = f"{answer['request']} {answer['where']}"
    if "error" in answer:
        return f"{head}: error: {answer['error']}"
    data = answer["data"]
    if isinstance(data, dict) and all(isinstance(v, (str, int, float, type(None))) for v in data.values()):
        return f"{head}: " + (", ".join(f"{k} {v}" for k, v in data.items()) or "none")
    return f"{head}: {json.dumps(data, separators=(',', ':'), default=str)}"
