"""The job model on its own (no Redis): QCG-PilotJob's format, the Jobs builder, batch checks, serialisation."""
from __future__ import annotations

import json
import logging
import os

import pytest

from qcgpj.errors import (
    DependencyError,
    DuplicateJobError,
    JobSpecError,
    ResourceError,
    UnknownJobError,
)
from qcgpj.jobs import Jobs
from qcgpj.batch import check_batch, parse_jobs_file, parse_jobs_text
from qcgpj.jobspec import (
    Dependency,
    Iteration,
    JobSpec,
    format_walltime,
    parse_job,
    parse_walltime,
    substitute,
)


def job(name: str = "j", **parts) -> dict:
    """A job description: ``job(execution={...}, resources={...})``; exec defaults to /bin/true."""
    d = {"name": name, "execution": parts.pop("execution", {"exec": "/bin/true"})}
    d.update(parts)
    return d


def ex(**fields) -> dict:
    return job(execution={"exec": "/bin/true", **fields})


def expect_error(desc: dict, field: str, words: str, kind: type = JobSpecError, name: str | None = "j") -> None:
    with pytest.raises(kind) as err:
        parse_job(desc)
    assert err.value.job == name and err.value.field == field, str(err.value)
    where = ", ".join(([f"job '{name}'"] if name is not None else []) + [f"field '{field}'"])
    assert str(err.value).startswith(where + ": "), str(err.value)
    assert words in err.value.message, err.value.message


# ---------------------------------------------------------------------- good descriptions
def test_minimal_job_has_the_defaults():
    s = parse_job(job())
    assert (s.name, s.exec, s.script, s.args, s.env, s.model) == ("j", "/bin/true", None, (), {}, "default")
    assert (s.cores_min, s.cores_max, s.nodes_min, s.nodes_max, s.walltime) == (1, 1, None, None, None)
    assert s.after == () and s.iteration is None and s.n_iterations == 1 and s.attributes == {}


def test_every_execution_field():
    s = parse_job(ex(args=["-n", 4, 2.5, ""], env={"A": "1", "B": 2}, stdin="in", stdout="o.${it}", stderr="e",
                     wd="w/${jname}", model="threads", model_opts={"mpirun": "x", "mpirun_args": ["-v"]},
                     modules=["gcc/12", "openmpi"], venv="/v"))
    assert s.args == ("-n", "4", "2.5", "")          # numbers become strings, as QCG-PilotJob does
    assert s.env == {"A": "1", "B": "2"}
    assert (s.stdin, s.stdout, s.stderr, s.wd, s.venv) == ("in", "o.${it}", "e", "w/${jname}", "/v")
    assert s.model == "threads" and s.model_opts["mpirun_args"] == ["-v"] and s.modules == ("gcc/12", "openmpi")


def test_script_job_may_have_an_environment():
    s = parse_job(job(execution={"script": "echo $X", "env": {"X": "y"}}))
    assert s.script == "echo $X" and s.exec is None and s.env == {"X": "y"}


@pytest.mark.parametrize("model, stored", [("default", "default"), ("OpenMPI", "openmpi"), ("intelmpi", "intelmpi"),
                                           ("srunmpi", "srunmpi"), ("shout", "shout"), ("My.Plugin-2", "My.Plugin-2")])
def test_models_known_ones_case_insensitive_plugins_as_written(model, stored):
    assert parse_job(ex(model=model)).model == stored


def test_python_model_takes_a_module_and_function():
    assert parse_job(ex(exec="os:makedirs", model="python")).exec == "os:makedirs"


def test_single_module_string():
    assert parse_job(ex(modules="gcc")).modules == ("gcc",)


def test_nulls_count_as_absent_as_qcgpj_writes_them():
    """QCG-PilotJob's own serialiser writes every execution key, with null and empty values."""
    d = job(execution={"exec": "/bin/date", "args": [], "env": {}, "script": None, "stdout": None},
            resources={"numCores": {"exact": 2, "min": None}, "wt": None}, dependencies={"after": []},
            iteration=None, attributes=None)
    s = parse_job(d)
    assert (s.exec, s.script, s.args, s.cores_min, s.cores_max, s.after) == ("/bin/date", None, (), 2, 2, ())


@pytest.mark.parametrize("value, lo, hi", [
    (3, 3, 3), ({"exact": 4}, 4, 4), ({"min": 2, "max": 8}, 2, 8), ({"min": 2}, 2, None), ({"max": 5}, 1, 5),
    ({"min": 3, "max": 3}, 3, 3),
])
def test_core_and_node_counts(value, lo, hi):
    s = parse_job(job(resources={"numCores": value, "numNodes": value}))
    assert (s.cores_min, s.cores_max) == (lo, hi) and (s.nodes_min, s.nodes_max) == (lo, hi)


def test_iteration_resource_scheduler_is_kept_for_submit():
    s = parse_job(job(resources={"numCores": {"min": 2, "scheduler": {"name": "split-into"}}}, iteration={"stop": 2}))
    assert (s.cores_min, s.sizing) == (2, ("split-into", 0, False, False))   # sized by Manager.submit (test_requests)


@pytest.mark.parametrize("wt, seconds", [("1h2m3s", 3723), ("10m", 600), ("30s", 30), ("2h", 7200), ("1d2h", 93600),
                                         ("1h 30m", 5400), ("90", 90), ("1.5", 1.5), ("0.5s", 0.5), (45, 45),
                                         (2.5, 2.5), ("2H", 7200)])
def test_walltimes(wt, seconds):
    assert parse_walltime(wt) == seconds
    assert parse_job(job(resources={"wt": wt})).walltime == seconds


@pytest.mark.parametrize("wt", ["soon", "", "1h30", "10x", "h", "-5s", "0s", "0", "1e3s", "1m1h"])
def test_bad_walltime_text(wt):
    with pytest.raises(ValueError):
        parse_walltime(wt)


@pytest.mark.parametrize("wt", [None, True, [], {"h": 1}])
def test_bad_walltime_type(wt):
    with pytest.raises(TypeError):
        parse_walltime(wt)


@pytest.mark.parametrize("seconds, text", [(3723, "1h2m3s"), (600, "10m"), (7200, "2h"), (93600, "26h"),
                                           (0.5, "0.5s"), (3600.25, "3600.25s"), (59, "59s")])
def test_walltime_written_as_qcgpj_reads_it(seconds, text):
    assert format_walltime(float(seconds)) == text and parse_walltime(text) == seconds


def test_dependencies_all_forms_and_repeats_dropped():
    s = parse_job(job(dependencies={"after": ["a", "b:3", "c:${it}", "a"]}, iteration={"stop": 2}))
    assert s.after == (Dependency("a"), Dependency("b", 3), Dependency("c", per_iteration=True))
    assert [str(d) for d in s.after] == ["a", "b:3", "c:${it}"]


@pytest.mark.parametrize("it, start, stop, values", [
    ({"stop": 3}, 0, 3, None), ({"start": 2, "stop": 5}, 2, 5, None), ({"start": None, "stop": 1}, 0, 1, None),
    ({"values": ["x", 2, 1.5]}, 0, 3, ("x", 2, 1.5)),
])
def test_iteration_forms(it, start, stop, values):
    i = parse_job(job(iteration=it)).iteration
    assert (i.start, i.stop, i.values) == (start, stop, values)


def test_iteration_helpers():
    r = Iteration(2, 5)
    assert r.count == 3 and r.ids() == range(2, 5) and r.value(3) == "3"
    v = Iteration(0, 3, ("a", 7, 0.5))
    assert v.count == 3 and list(v.ids()) == [0, 1, 2] and [v.value(i) for i in v.ids()] == ["a", "7", "0.5"]
    assert parse_job(job(iteration={"stop": 4})).n_iterations == 4


def test_attributes_are_free_and_copied():
    attrs = {"k": [1, {"x": None}], "flag": True}
    s = parse_job(job(attributes=attrs))
    attrs["k"] = "changed"
    assert s.attributes == {"k": [1, {"x": None}], "flag": True}


# ---------------------------------------------------------------------- bad descriptions
@pytest.mark.parametrize("name", ["a:b", "a b", "a|b", "{x}", "a}b", ".hidden", "-x", "x" * 201, "ok\n", "ä", "a/b"])
def test_bad_names(name):
    expect_error(job(name), "name", "letters, digits", name=name)


@pytest.mark.parametrize("name", ["a", "A_1", "_x", "0", "sim.v2-final", "x" * 200])
def test_good_names(name):
    assert parse_job(job(name)).name == name


@pytest.mark.parametrize("desc", [{"execution": {"exec": "x"}}, {"name": "", "execution": {"exec": "x"}},
                                  {"name": 5, "execution": {"exec": "x"}}])
def test_missing_name_has_no_job_to_name(desc):
    expect_error(desc, "name", "required", name=None)


def test_a_job_description_must_be_an_object():
    with pytest.raises(JobSpecError, match="must be an object, got array"):
        parse_job([])


@pytest.mark.parametrize("desc, field, words", [
    (job(bogus=1), "bogus", "unknown field"),
    ({"name": "j"}, "execution", "required"),
    (job(execution="ls"), "execution", "must be an object"),
    (job(execution={}), "execution", "exactly one of 'exec' and 'script'"),
    (job(execution={"exec": "a", "script": "b"}), "execution", "exactly one"),
    (job(execution={"exec": "a", "bogus": 1}), "execution.bogus", "unknown field"),
    (job(execution={"exec": ""}), "execution.exec", "non-empty string"),
    (job(execution={"exec": 5}), "execution.exec", "got integer 5"),
    (job(execution={"script": ["ls"]}), "execution.script", "non-empty string"),
    (job(execution={"script": "ls", "args": ["-l"]}), "execution.args", "'args' go with 'exec'"),
    (ex(args="a b"), "execution.args", "must be a list"),
    (ex(args=["a", True]), "execution.args[1]", "string or a number, got boolean"),
    (ex(args=[None]), "execution.args[0]", "got null"),
    (ex(args=[{}]), "execution.args[0]", "got object"),
    (ex(env=["A=1"]), "execution.env", "must be an object"),
    (ex(env={"A": [1]}), "execution.env.A", "string or a number"),
    (ex(env={"A": False}), "execution.env.A", "string or a number"),
    (ex(env={"A=B": "1"}), "execution.env", "not a variable name"),
    (ex(env={"": "1"}), "execution.env", "not a variable name"),
    (ex(stdin=5), "execution.stdin", "non-empty string"),
    (ex(stdout=""), "execution.stdout", "non-empty string"),
    (ex(stderr=[]), "execution.stderr", "non-empty string"),
    (ex(wd={}), "execution.wd", "non-empty string"),
    (ex(venv=1), "execution.venv", "non-empty string"),
    (ex(model=""), "execution.model", "model name"),
    (ex(model="two words"), "execution.model", "model name"),
    (ex(model=3), "execution.model", "model name"),
    (ex(model="python"), "execution.exec", "package.module:function"),
    (job(execution={"script": "x", "model": "python"}), "execution.exec", "package.module:function"),
    (ex(model_opts=["x"]), "execution.model_opts", "must be an object"),
    (ex(model_opts={"mpirun_args": [float("nan")]}), "execution.model_opts.mpirun_args[0]", "finite"),
    (ex(modules=[""]), "execution.modules[0]", "non-empty string"),
    (ex(modules=5), "execution.modules", "must be a list"),
    (ex(modules=["gcc", 1]), "execution.modules[1]", "non-empty string"),
])
def test_bad_execution(desc, field, words):
    expect_error(desc, field, words)


@pytest.mark.parametrize("res, field, words", [
    ("2", "resources", "must be an object"),
    ({"cores": 2}, "resources.cores", "unknown field"),
    ({"nodeCrs": 1}, "resources.nodeCrs", "must be an object"),
    ({"nodeCrs": {"gpu": -1}}, "resources.nodeCrs.gpu", "integer from 0"),
    ({"nodeCrs": {"gpu": 1.5}}, "resources.nodeCrs.gpu", "integer from 0"),
    ({"nodeCrs": {"gpu": True}}, "resources.nodeCrs.gpu", "integer from 0"),
    ({"nodeCrs": {"tpu": 1}}, "resources.nodeCrs.tpu", "unknown resource"),
    ({"nodeCrs": {"gpu": 1, "gpus": 2}}, "resources.nodeCrs.gpus", "given twice"),
    ({"nodeCrs": {"mem": "lots"}}, "resources.nodeCrs.mem", "memory size"),
    ({"nodeCrs": {"mem": -5}}, "resources.nodeCrs.mem", "between 1 MiB"),
    ({"nodeCrs": {"mem": "512K"}}, "resources.nodeCrs.mem", "MiB or larger"),
    ({"numCores": 0}, "resources.numCores", "must be a positive integer, got integer 0"),
    ({"numCores": -1}, "resources.numCores", "positive integer"),
    ({"numCores": True}, "resources.numCores", "positive integer, got boolean"),
    ({"numCores": 1.5}, "resources.numCores", "positive integer"),
    ({"numCores": "2"}, "resources.numCores", "positive integer, got string"),
    ({"numCores": {"exact": 0}}, "resources.numCores.exact", "positive integer"),
    ({"numCores": {"exact": 2, "min": 1}}, "resources.numCores", "cannot be combined"),
    ({"numCores": {}}, "resources.numCores", "needs 'exact', 'min' or 'max'"),
    ({"numCores": {"min": 0}}, "resources.numCores.min", "must be a positive integer"),
    ({"numCores": {"min": 1, "max": "4"}}, "resources.numCores.max", "positive integer"),
    ({"numCores": {"min": 4, "max": 2}}, "resources.numCores.max", "less than min (4)"),
    ({"numCores": {"most": 2}}, "resources.numCores.most", "unknown field"),
    ({"numNodes": 0}, "resources.numNodes", "positive integer"),
    ({"numNodes": {"min": 3, "max": 1}}, "resources.numNodes.max", "less than min"),
    ({"wt": "soon"}, "resources.wt", "duration"),
    ({"wt": "0s"}, "resources.wt", "positive duration"),
    ({"wt": -5}, "resources.wt", "positive duration"),
    ({"wt": True}, "resources.wt", "duration"),
    ({"wt": ["1h"]}, "resources.wt", "duration"),
])
def test_bad_resources(res, field, words):
    expect_error(job(resources=res), field, words)


@pytest.mark.parametrize("deps, field, words", [
    (["a"], "dependencies", "must be an object"),
    ({"before": ["a"]}, "dependencies.before", "unknown field"),
    ({"after": "a"}, "dependencies.after", "must be a list"),
    ({"after": [1]}, "dependencies.after", "must be a job name"),
    ({"after": ["a:b"]}, "dependencies.after", "expected 'job', 'job:N' or 'job:${it}'"),
    ({"after": ["a:-1"]}, "dependencies.after", "'job:N'"),
    ({"after": ["a:${iter}"]}, "dependencies.after", "'job:${it}'"),
    ({"after": ["a:"]}, "dependencies.after", "'job:N'"),
    ({"after": ["bad name"]}, "dependencies.after", "not a valid job name"),
    ({"after": [""]}, "dependencies.after", "not a valid job name"),
    ({"after": ["j"]}, "dependencies.after", "cannot depend on itself"),
    ({"after": ["j:2"]}, "dependencies.after", "cannot depend on itself"),
])
def test_bad_dependencies(deps, field, words):
    kind = JobSpecError if isinstance(deps, list) or "before" in deps else DependencyError
    expect_error(job(dependencies=deps), field, words, kind)


@pytest.mark.parametrize("it, field, words", [
    (5, "iteration", "must be an object"),
    ({}, "iteration.stop", "required"),
    ({"start": 1}, "iteration.stop", "required"),
    ({"stop": 3, "step": 1}, "iteration.step", "unknown field"),
    ({"start": 5, "stop": 2}, "iteration.stop", "greater than start (5)"),
    ({"start": 2, "stop": 2}, "iteration.stop", "greater than start"),
    ({"stop": 0}, "iteration.stop", "greater than start (0)"),
    ({"stop": -1}, "iteration.stop", "non-negative integer"),
    ({"start": -1, "stop": 3}, "iteration.start", "non-negative integer"),
    ({"stop": 1.5}, "iteration.stop", "non-negative integer"),
    ({"stop": "3"}, "iteration.stop", "non-negative integer"),
    ({"values": []}, "iteration.values", "non-empty list"),
    ({"values": "abc"}, "iteration.values", "non-empty list"),
    ({"values": [1, [2]]}, "iteration.values[1]", "string or a number"),
    ({"values": [True]}, "iteration.values[0]", "string or a number"),
    ({"values": [1], "stop": 2}, "iteration", "cannot be combined"),
])
def test_bad_iterations(it, field, words):
    expect_error(job(iteration=it), field, words)


@pytest.mark.parametrize("attrs, field", [(["a"], "attributes"), ("x", "attributes")])
def test_bad_attributes(attrs, field):
    expect_error(job(attributes=attrs), field, "must be an object")


def test_attributes_must_be_json_data():
    with pytest.raises(JobSpecError, match="field 'attributes.s': must be JSON data"):
        Jobs().add(name="j", exec="x", attributes={"s": {1, 2}})
    with pytest.raises(JobSpecError, match="field 'attributes': keys must be strings"):
        Jobs().add(name="j", exec="x", attributes={1: "x"})


# ---------------------------------------------------------------------- request files
SUBMIT = '{"request": "submit", "jobs": [{"name": "a", "execution": {"exec": "x"}}, ' \
         '{"name": "b", "execution": {"exec": "y"}, "dependencies": {"after": ["a"]}}]}'


def test_request_file_with_submit_and_control():
    jobs, finish = parse_jobs_text(f'[{SUBMIT}, {{"request": "control", "command": "finishAfterAllTasksDone"}},'
                                   ' {"request": "finish"}]')
    assert [j.name for j in jobs] == ["a", "b"] and finish


def test_several_submits_keep_their_order_and_finish_is_optional():
    jobs, finish = parse_jobs_text(f'[{SUBMIT}, {{"request": "submit", "jobs": [{{"name": "c", '
                                   '"execution": {"script": "true"}}]}]')
    assert [j.name for j in jobs] == ["a", "b", "c"] and not finish


def test_bare_list_of_jobs():
    jobs, finish = parse_jobs_text(json.dumps([job("a"), job("b")]))
    assert [j.name for j in jobs] == ["a", "b"] and not finish
    assert parse_jobs_text("[]") == ([], False)


def test_questions_submit_nothing_and_service_requests_are_ignored_with_a_warning(caplog):
    reqs = [{"request": "listJobs"}, {"request": "jobStatus", "jobNames": ["a"]}, {"request": "resourcesInfo"},
            {"request": "status"}, {"request": "jobInfo", "jobNames": ["a"]}, {"request": "notify"}]
    with caplog.at_level(logging.WARNING, logger="qcgpj.requests"):
        assert parse_jobs_text(json.dumps(reqs)) == ([], False)
    assert "notify" in caplog.text and "listJobs" not in caplog.text


@pytest.mark.parametrize("text, field, words", [
    ('{"jobs": []}', None, "expected a list"),
    ('"x"', None, "expected a list"),
    ('[{"request": "explode"}]', "[0].request", "unknown request 'explode'"),
    ('[{"request": 7}]', "[0].request", "request name"),
    ('[{"request": "control", "command": "stop"}]', "[0].command", "unknown control command"),
    ('[{"request": "control"}]', "[0].command", "unknown control command"),
    ('[{"request": "submit"}]', "[0].jobs", "non-empty list"),
    ('[{"request": "submit", "jobs": []}]', "[0].jobs", "non-empty list"),
    ('[{"request": "submit", "jobs": [], "x": 1}]', "[0].x", "unknown field"),
    ('[{"request": "submit", "jobs": [{"execution": {"exec": "x"}}]}]', "[0].jobs[0].name", "required"),
    ('[1]', "[0]", "must be an object"),
    ('[{"name": "ok", "execution": {"exec": "x"}}, {"name": "ok2"}]', "execution", "required"),
])
def test_bad_request_files(text, field, words):
    with pytest.raises(JobSpecError) as err:
        parse_jobs_text(text)
    assert err.value.field == field and words in err.value.message, str(err.value)


@pytest.mark.parametrize("text, line, col", [("[{", 1, 3), ('[\n  {"name": "a" "x"}\n]', 2, 16), ("", 1, 1)])
def test_malformed_json_says_where(text, line, col):
    with pytest.raises(JobSpecError, match=f"^malformed JSON at line {line} column {col}: "):
        parse_jobs_text(text)


def test_request_files_on_disk(tmp_path):
    path = tmp_path / "reqs.json"
    path.write_text(f"[{SUBMIT}]")
    jobs, _ = parse_jobs_file(str(path))
    assert [j.name for j in jobs] == ["a", "b"]
    with pytest.raises(JobSpecError, match="cannot read .*nosuch.json"):
        parse_jobs_file(str(tmp_path / "nosuch.json"))
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe[")
    with pytest.raises(JobSpecError, match="cannot read"):
        parse_jobs_file(str(tmp_path / "bin.json"))


# ---------------------------------------------------------------------- batches
def spec(name: str, after: tuple = (), it: dict | None = None, **res) -> JobSpec:
    return parse_job(job(name, dependencies={"after": list(after)}, iteration=it, resources=res or None))


def test_batch_returns_the_dependencies_outside_it():
    assert check_batch([spec("a"), spec("b", ["a", "x"]), spec("c", ["y:3", "b"])]) == {"x", "y"}
    assert check_batch([]) == set()


def test_batch_duplicates():
    with pytest.raises(DuplicateJobError) as err:
        check_batch([spec("a"), spec("b"), spec("a")])
    assert err.value.job == "a" and err.value.field == "name"


def test_batch_self_dependency_built_by_hand():
    with pytest.raises(DependencyError, match="job 'a', field 'dependencies.after': 'a': a job cannot depend"):
        check_batch([JobSpec("a", exec="x", after=(Dependency("a"),))])


@pytest.mark.parametrize("jobs, path", [
    ([spec("a", ["b"]), spec("b", ["a"])], "a -> b -> a"),
    ([spec("s"), spec("a", ["s", "c"]), spec("b", ["a"]), spec("c", ["b"])], "a -> c -> b -> a"),
    ([spec("a", ["b:1"]), spec("b", ["a"], it={"stop": 2})], "a -> b -> a"),
])
def test_batch_cycles_name_a_job_on_the_cycle_and_the_path(jobs, path):
    with pytest.raises(DependencyError) as err:
        check_batch(jobs)
    assert err.value.field == "dependencies.after" and err.value.message == f"dependency cycle: {path}"
    assert err.value.job in path.split(" -> ")


def test_batch_long_chain_has_no_recursion_limit():
    chain = [spec("c0")] + [spec(f"c{i}", [f"c{i - 1}"]) for i in range(1, 20_000)]
    assert check_batch(chain) == set()
    with pytest.raises(DependencyError, match="cycle: c0 -> c19999 -> "):
        check_batch([spec("c0", ["c19999"])] + chain[1:])


def test_batch_per_iteration_dependencies():
    a = spec("a", it={"stop": 3})
    assert check_batch([a, spec("b", ["a:${it}"], it={"stop": 3})]) == set()
    for other in (spec("b", ["a:${it}"], it={"stop": 4}), spec("b", ["a:${it}"], it={"start": 1, "stop": 4}),
                  spec("b", ["a:${it}"])):
        with pytest.raises(DependencyError, match="job 'b'.*'a:\\${it}' needs both jobs iterative over the same"):
            check_batch([a, other])
    with pytest.raises(DependencyError, match="same iterations"):
        check_batch([spec("p"), spec("b", ["p:${it}"], it={"stop": 3})])
    with pytest.raises(DependencyError, match="not in this batch"):      # non-iterative: no need to ask the store
        check_batch([spec("b", ["elsewhere:${it}"])])
    assert check_batch([spec("b", ["elsewhere:${it}"], it={"stop": 2})]) == {"elsewhere"}


def test_batch_single_iteration_dependencies():
    a = spec("a", it={"start": 2, "stop": 5})
    assert check_batch([a, spec("b", ["a:2"]), spec("c", ["a:4"])]) == set()
    for bad in ("a:5", "a:1"):
        with pytest.raises(DependencyError, match=f"'{bad}' names no iteration of 'a' \\(iterations 2..4\\)"):
            check_batch([a, spec("b", [bad])])
    with pytest.raises(DependencyError, match="names no iteration of 'p' \\(not iterative\\)"):
        check_batch([spec("p"), spec("b", ["p:0"])])


def test_batch_resources_against_the_largest_executor():
    assert check_batch([spec("a", numCores=8)], max_cores=8, max_nodes=1) == set()
    with pytest.raises(ResourceError, match="job 'a', field 'resources.numCores': needs at least 9 cores, but the "
                                            "largest executor has 8"):
        check_batch([spec("a", numCores={"min": 9})], max_cores=8)
    with pytest.raises(ResourceError, match="field 'resources.numCores': needs at least 12 cores"):
        check_batch([spec("a", numCores=4, numNodes=3)], max_cores=8)        # numCores is per node
    with pytest.raises(ResourceError, match="field 'resources.numNodes': needs at least 3 nodes"):
        check_batch([spec("a", numNodes={"min": 3})], max_nodes=2)
    with pytest.raises(ResourceError, match="field 'resources.numNodes': needs at least 2 nodes"):
        check_batch([spec("a", numNodes=2)], max_cores=1, max_nodes=1)   # not numCores, which is not given
    assert check_batch([spec("a", numCores={"min": 1, "max": 64})], max_cores=8) == set()


# ---------------------------------------------------------------------- substitution
def test_substitution():
    variables = {"it": "3", "itval": "x", "ncores": "4", "nnodes": "1", "nlist": "n1", "root_wd": "/r", "jname": "j"}
    assert substitute("${root_wd}/${jname}.${it}.${itval}-${ncores}x${nnodes}@${nlist}", variables) == \
        "/r/j.3.x-4x1@n1"
    assert substitute("${it}${it}", {"it": "7"}) == "77"
    assert substitute("$HOME ${HOME} ${it} $it ${ it }", {"it": "1"}) == "$HOME ${HOME} 1 $it ${ it }"
    assert substitute("no variables", {}) == "no variables"


# ---------------------------------------------------------------------- serialisation
FULL = job("full", execution={"exec": "/bin/app", "args": ["a b", "\"q\"", "tab\t", "ünï", "\x01", "${it}"],
                              "env": {"K": "v\"\\", "P": "/x"}, "stdin": "i", "stdout": "o", "stderr": "e",
                              "wd": "w", "model": "openmpi", "model_opts": {"mpirun_args": ["-n", 2]},
                              "modules": ["m1", "m2"], "venv": "/v"},
           resources={"numCores": {"min": 2, "max": 4}, "numNodes": {"min": 1}, "wt": "1h30m"},
           dependencies={"after": ["p", "q:2", "r:${it}"]}, iteration={"start": 1, "stop": 3},
           attributes={"k": [1, 2.5, None, {"z": "é"}]})
SPECS = [job(), FULL, job("s", execution={"script": "echo 'hi' \"there\"\n"}), job("v", iteration={"values": ["a", 1]}),
         job("c", resources={"numCores": 3, "wt": 0.5}), job("m", resources={"numCores": {"max": 2}})]


@pytest.mark.parametrize("desc", SPECS, ids=[d["name"] for d in SPECS])
def test_round_trips(desc):
    s = parse_job(desc)
    text = s.to_json()
    assert text == json.dumps(s.to_dict(), separators=(",", ":"))    # the hand-written JSON is standard JSON
    assert JobSpec.from_json(text) == s
    assert parse_job(s.to_dict()) == s
    assert parse_job(json.loads(text)) == s


def test_to_dict_is_compact_and_in_qcgpj_form():
    assert parse_job(job()).to_dict() == {"name": "j", "execution": {"exec": "/bin/true"}}
    d = parse_job(FULL).to_dict()
    assert d["resources"] == {"numCores": {"min": 2, "max": 4}, "numNodes": {"min": 1}, "wt": "1h30m"}
    assert d["iteration"] == {"start": 1, "stop": 3} and d["dependencies"] == {"after": ["p", "q:2", "r:${it}"]}
    assert d["execution"]["model_opts"] == {"mpirun_args": ["-n", 2]}
    assert parse_job(job(resources={"numCores": 2})).to_dict()["resources"] == {"numCores": {"exact": 2}}
    assert parse_job(job(iteration={"stop": 3})).to_dict()["iteration"] == {"stop": 3}


def test_to_dict_is_a_copy():
    s = parse_job(FULL)
    s.to_dict()["execution"]["env"]["K"] = "changed"
    assert s.env["K"] == "v\"\\"


def test_to_json_escapes_what_json_needs():
    s = Jobs().add(name="e", exec="/bin/echo", args=["</script>", "\u2028", "\\"]).jobs()[0]
    assert json.loads(s.to_json())["execution"]["args"] == ["</script>", "\u2028", "\\"]
    assert s.to_json().isascii()


def test_dependency_text_round_trips():
    for text in ("a", "a:0", "a:12", "a:${it}"):
        assert str(Dependency.parse(text, "o")) == text


# ---------------------------------------------------------------------- the Jobs builder
def test_builder_chains_and_keeps_order():
    jobs = (Jobs().add(name="a", exec="/bin/echo", args=["x", 1], numCores=2, wt="10m", stdout="a.out")
            .add(name="b", script="echo ${it}", iteration=3, after="a")
            .add(name="c", exec="x", iteration=[10, 20], after=["a", "b:${it}"], numNodes={"min": 1, "max": 2}))
    assert len(jobs) == 3 and jobs.ordered_names() == ["a", "b", "c"] == jobs.job_names() == jobs.ordered_job_names()
    assert [s.name for s in jobs] == ["a", "b", "c"] and [s.name for s in jobs.jobs()] == ["a", "b", "c"]
    a, b, c = jobs.jobs()
    assert a.args == ("x", "1") and (a.cores_min, a.cores_max, a.walltime, a.stdout) == (2, 2, 600, "a.out")
    assert b.iteration == Iteration(0, 3) and b.after == (Dependency("a"),)
    assert c.iteration == Iteration(0, 2, (10, 20)) and (c.nodes_min, c.nodes_max) == (1, 2)
    assert "a" in jobs and "z" not in jobs


def test_builder_matches_the_file_format():
    built = Jobs().add(name="full", exec="/bin/app", args=FULL["execution"]["args"], env=FULL["execution"]["env"],
                       stdin="i", stdout="o", stderr="e", wd="w", model="openmpi",
                       model_opts={"mpirun_args": ["-n", 2]}, modules=["m1", "m2"], venv="/v",
                       numCores={"min": 2, "max": 4}, numNodes={"min": 1}, wt="1h30m",
                       after=["p", "q:2", "r:${it}"], iteration={"start": 1, "stop": 3},
                       attributes=FULL["attributes"]).jobs()[0]
    assert built == parse_job(FULL)


@pytest.mark.parametrize("it, expected", [
    (4, Iteration(0, 4)), ({"start": 2, "stop": 4}, Iteration(2, 4)), ({"values": ["x"]}, Iteration(0, 1, ("x",))),
    (["p", "q"], Iteration(0, 2, ("p", "q"))), (("p",), Iteration(0, 1, ("p",))), (range(3, 6), Iteration(3, 6)),
])
def test_builder_iteration_forms(it, expected):
    assert Jobs().add(name="i", exec="x", iteration=it).jobs()[0].iteration == expected


@pytest.mark.parametrize("it", [0, -2, True, "3", 2.0, [], range(0, 6, 2), range(3, 3)])
def test_builder_bad_iterations(it):
    with pytest.raises(JobSpecError) as err:
        Jobs().add(name="i", exec="x", iteration=it)
    assert err.value.job == "i" and err.value.field.startswith("iteration")


@pytest.mark.parametrize("kwargs, field", [
    ({"exec": "x", "numCores": 0}, "resources.numCores"),
    ({"exec": "x", "numCores": {"min": 0}}, "resources.numCores.min"),
    ({"exec": "x", "numNodes": {"exact": -1}}, "resources.numNodes.exact"),
    ({"exec": "x", "wt": "forever"}, "resources.wt"),
    ({"exec": "x", "args": "a b"}, "execution.args"),
    ({"exec": "x", "after": ["ok", 3]}, "dependencies.after"),
    ({"exec": "x", "after": 3}, "dependencies.after"),
    ({"exec": "x", "env": {"A": object()}}, "execution.env.A"),
    ({"exec": "x", "model": "no spaces"}, "execution.model"),
    ({}, "execution"),
    ({"exec": "x", "script": "y"}, "execution"),
])
def test_builder_errors_name_job_and_field_and_add_nothing(kwargs, field):
    jobs = Jobs().add(name="first", exec="x")
    with pytest.raises(JobSpecError) as err:
        jobs.add(name="sim", **kwargs)
    assert err.value.job == "sim" and err.value.field == field
    assert str(err.value).startswith(f"job 'sim', field '{field}': ")
    assert jobs.ordered_names() == ["first"]


def test_builder_message_example_from_the_brief():
    with pytest.raises(JobSpecError, match="^job 'sim', field 'resources.numCores.min': must be a positive integer"):
        Jobs().add(name="sim", exec="x", numCores={"min": 0})


def test_builder_duplicates_and_names():
    jobs = Jobs().add(name="a", exec="x")
    with pytest.raises(DuplicateJobError, match="job 'a', field 'name'"):
        jobs.add(name="a", exec="y")
    with pytest.raises(JobSpecError, match="field 'name'"):
        jobs.add(name="bad:name", exec="y")
    with pytest.raises(JobSpecError, match="field 'name'"):
        jobs.add(name=["a"], exec="y")
    assert len(jobs) == 1


def test_builder_generates_unique_valid_names():
    jobs = Jobs()
    for _ in range(3):
        jobs.add(exec="x")
    jobs.add_std({"execution": {"exec": "y"}})
    names = jobs.ordered_names()
    assert len(set(names)) == 4 and all(parse_job(job(n)).name == n for n in names)
    assert len(set(names) | set(Jobs().add(exec="x").ordered_names())) == 5


def test_builder_accepts_qcgpj_dict_form():
    jobs = Jobs().add({"name": "d", "exec": "x", "numCores": 2}, stdout="d.out")
    s = jobs.jobs()[0]
    assert (s.name, s.exec, s.cores_min, s.stdout) == ("d", "x", 2, "d.out")
    with pytest.raises(JobSpecError, match="job 'd', field 'execution': unknown job attribute"):
        Jobs().add({"name": "d", "exec": "x", "execution": {}})


def test_builder_add_std():
    jobs = Jobs().add_std(FULL).add_std(job("other"))
    assert jobs.ordered_names() == ["full", "other"] and jobs.jobs()[0] == parse_job(FULL)
    with pytest.raises(DuplicateJobError):
        jobs.add_std(job("other"))
    with pytest.raises(JobSpecError, match="field 'execution'"):
        jobs.add_std({"name": "x"})


def test_builder_remove_and_clear():
    jobs = Jobs().add(name="a", exec="x").add(name="b", exec="x").add(name="c", exec="x")
    assert jobs.remove("b").ordered_names() == ["a", "c"]
    with pytest.raises(UnknownJobError, match="'b' is not in this batch"):
        jobs.remove("b")
    assert jobs.clear() == 2 and len(jobs) == 0 and list(jobs) == []


def test_builder_copies_what_it_is_given():
    env, args, opts = {"A": "1"}, ["x"], {"o": [1]}
    s = Jobs().add(name="c", exec="x", env=env, args=args, model_opts=opts).jobs()[0]
    env["A"], args[0], opts["o"] = "2", "y", None
    assert (s.env, s.args, s.model_opts) == ({"A": "1"}, ("x",), {"o": [1]})


def test_builder_files_round_trip(tmp_path):
    jobs = Jobs().add(name="a", exec="x", iteration=2).add(name="b", script="y", after="a:${it}", iteration=2)
    jobs.save_to_file(str(tmp_path / "jobs.json"))
    again = Jobs().load_from_file(str(tmp_path / "jobs.json"))
    assert again.jobs() == jobs.jobs()
    assert [j.name for j in parse_jobs_file(str(tmp_path / "jobs.json"))[0]] == ["a", "b"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_children_generate_other_names():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: no imports, no logging, just a name
        os.write(w, Jobs().add(exec="x").ordered_names()[0].encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    child = os.read(r, 256).decode()
    os.close(r)
    mine = Jobs().add(exec="x").ordered_names()[0]
    assert child and child.split("-")[0] != mine.split("-")[0]


# ---------------------------------------------------------------------- what the OS, Lua and timers cannot take
def _deep(levels: int) -> dict:
    v: dict = {}
    for _ in range(levels):
        v = {"a": v}
    return v


def _nested_list(levels: int) -> list:
    v: list = [1]
    for _ in range(levels):
        v = [v]
    return v


@pytest.mark.parametrize("desc, field, words", [
    (ex(exec="/bin/a\0b"), "execution.exec", "NUL"),
    (ex(args=["ok", "\ud800"]), "execution.args[1]", "lone surrogate"),
    (ex(env={"A": "x\0"}), "execution.env.A", "NUL"),
    (ex(stdout="out\0"), "execution.stdout", "NUL"),
    (ex(modules=["m\udcff"]), "execution.modules[0]", "lone surrogate"),
    (job(resources={"numCores": 10 ** 13}), "resources.numCores", "at most 1,000,000,000,000"),
    (job(resources={"numNodes": {"min": 2, "max": 10 ** 13}}), "resources.numNodes.max", "at most"),
    (job(iteration={"stop": 10 ** 13}), "iteration.stop", "at most"),
    (job(resources={"wt": "400d"}), "resources.wt", "366 days"),
    (job(attributes=_deep(40)), "attributes" + ".a" * 32, "nested more than 32 levels"),
    (ex(model_opts={"x": _nested_list(40)}), "execution.model_opts.x" + "[0]" * 31, "nested"),
])
def test_values_the_os_lua_or_a_timer_cannot_take(desc, field, words):
    expect_error(desc, field, words)


def test_non_ascii_text_that_is_utf8_is_welcome():
    spec = parse_job(ex(args=["é", "日本", "😀"], env={"X": "ü"}, stdout="ö.out"))
    assert spec.args == ("é", "日本", "😀") and JobSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("text, words", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('[{"name": "a", "execution": {"exec": "x"}, "resources": {"numCores": 1' + "0" * 5000 + "}}]", "malformed JSON"),
])
def test_json_beyond_what_the_parser_takes_is_one_error(text, words):
    with pytest.raises(JobSpecError, match=words):
        parse_jobs_text(text)


def test_unknown_keyword_of_the_builder_names_it():
    with pytest.raises(JobSpecError) as err:
        Jobs().add(name="x", exec="/bin/true", numcores=2)
    assert err.value.job == "x" and err.value.field == "numcores" and "unknown job attribute" in str(err.value)
