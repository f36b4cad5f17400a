"""QCG-PilotJob request files as sequences of requests (`qcgpj run`, `qcgpj submit`) and its submit-time
variables. Real processes: local mode, and a real redis-server with an executor."""
from __future__ import annotations

import json

import pytest

from qcgpj.errors import JobSpecError
from qcgpj.requests import parse_requests
from tests.cluster import Cluster
from tests.test_cli import qcgpj, write


def submit(*jobs: dict) -> dict:
    return {"request": "submit", "jobs": list(jobs)}


def job(name: str, script: str = "true", **extra) -> dict:
    return {"name": name, "execution": {"script": script}, **extra}


# ---------------------------------------------------------------------- reading
def test_submit_time_variables_and_the_dollar_escape():
    reqs = parse_requests(json.dumps([
        submit(job("a${rcnt}", "echo $$HOME ${it} ${jname} ${sname}"), job("u${rcnt}", "echo ${uniq}")),
        {"request": "listJobs"},
        submit(job("b${rcnt}", "echo ${uniq} ${date}"))]))
    a, u = reqs[0].jobs
    b = reqs[2].jobs[0]
    assert [a.name, u.name, b.name] == ["a1", "u1", "b2"]   # ${rcnt} counts submit requests only
    assert a.script == "echo $HOME ${it} ${jname} local"    # $$ is '$'; launch-time variables stay
    uniq1, (uniq2, date) = u.script.split()[1], b.script.split()[1:]
    assert len(uniq1) == 36 and uniq1 != uniq2 and len(date) == 10



def test_a_bare_list_of_jobs_is_a_submit_for_its_variables():
    """Jobs listed without a submit request (the form Jobs.save_to_file writes) kept $$ and ${uniq} as written,
    so the shell saw its PID and an empty variable where the same job inside a submit request got $ and a UUID."""
    reqs = parse_requests(json.dumps([job("a${rcnt}", "echo $$HOME ${sname} ${it}"), job("u${rcnt}", "echo ${uniq}"),
                                      submit(job("b${rcnt}", "echo ${uniq}")), job("c${rcnt}")]))
    (a, u), b, c = reqs[0].jobs, reqs[1].jobs[0], reqs[2].jobs[0]
    assert [r.kind for r in reqs] == ["jobs", "submit", "jobs"] and [a.name, u.name, b.name, c.name] == \
        ["a1", "u1", "b2", "c3"]
    uniq_u, uniq_b = u.script.split()[1], b.script.split()[1]
    assert a.script == "echo $HOME local ${it}" and len(uniq_u) == len(uniq_b) == 36 and uniq_u != uniq_b

def test_unknown_variable_in_a_name_is_named():
    with pytest.raises(JobSpecError) as err:
        parse_requests(json.dumps([submit(job("x${nope}"))]))
    assert err.value.field == "[0].jobs[0].name" and "unknown variable ${nope}" in err.value.message


def test_a_single_request_object_is_a_file():
    reqs = parse_requests(json.dumps(submit(job("solo"))))
    assert [(r.kind, [j.name for j in r.jobs]) for r in reqs] == [("submit", ["solo"])]


@pytest.mark.parametrize("req", [{"request": "cancelJob"}, {"request": "removeJob", "jobNames": []},
                                 {"request": "jobStatus", "jobNames": "a"}])
def test_requests_about_jobs_need_their_names(req):
    with pytest.raises(JobSpecError) as err:
        parse_requests(json.dumps([req]))
    assert err.value.field == "[0].jobNames"


# ---------------------------------------------------------------------- local mode
def test_local_run_applies_requests_in_order(tmp_path):
    write(tmp_path / "reqs.json", [
        submit(job("a${rcnt}", "echo $$0 ${jname} > out_${rcnt}.txt")),
        submit(job("b${rcnt}", "sleep 300"), job("c${rcnt}", "true", dependencies={"after": ["a1"]})),
        {"request": "cancelJob", "jobNames": ["b2"]},
        {"request": "jobStatus", "jobNames": ["b2"]},
        {"request": "resourcesInfo"},
        {"request": "removeJob", "jobNames": ["nosuch"]},
        {"request": "control", "command": "finishAfterAllTasksDone"}])
    res = qcgpj("run", "reqs.json", "--cores", "2", "--json", cwd=tmp_path)
    answers = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [a["request"] for a in answers] == ["cancelJob", "jobStatus", "resourcesInfo", "removeJob"]
    assert answers[1]["data"] == {"b2": "CANCELED"} and answers[2]["data"]["total_cores"] == 2
    assert "'nosuch'" in answers[3]["error"] and "unknown" in answers[3]["error"]
    assert (tmp_path / "out_1.txt").read_text().split()[1] == "a1"     # $$0 -> $0 of the shell
    assert "3 jobs: SUCCEED 2, CANCELED 1" in res.stdout
    assert res.returncode == 1   # a canceled job and a refused request


def test_local_run_of_a_file_with_only_questions(tmp_path):
    write(tmp_path / "res.json", [{"request": "resourcesInfo"}, {"request": "finish"}])
    res = qcgpj("run", "res.json", "--cores", "3", cwd=tmp_path)
    assert res.returncode == 0 and "total_cores 3" in res.stdout, res.stdout + res.stderr


# ---------------------------------------------------------------------- a real queue
def test_submit_requests_on_a_queue(tmp_path, redis_url):
    url = ["--redis-url", redis_url]
    write(tmp_path / "one.json", [submit(job("x")), {"request": "removeJob", "jobNames": ["x"]},
                                  submit(job("y", dependencies={"after": ["x"]}))])
    res = qcgpj("submit", "one.json", *url, cwd=tmp_path)
    assert res.returncode == 1 and "removeJob [1]: error" in res.stderr   # x is not final yet: it stays
    assert "submitted 2 job(s)" in res.stdout                             # y, a later batch, depends on it
    cluster = Cluster(redis_url, tmp_path)
    try:
        cluster.serving(2)
        assert qcgpj("wait", "--timeout", "120", *url, cwd=tmp_path).returncode == 0
        write(tmp_path / "two.json", [{"request": "removeJob", "jobNames": ["y"]},
                                      {"request": "removeJob", "jobNames": ["x"]},
                                      submit(job("x", "exit 3")), {"request": "listJobs"}])
        res = qcgpj("submit", "two.json", "--json", *url, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        answers = [json.loads(line) for line in res.stdout.splitlines()]
        assert [a["data"] for a in answers][:2] == [{"removed": ["y"]}, {"removed": ["x"]}]
        assert list(answers[2]["data"]) == ["x"]   # the name is taken again
        dup = write(tmp_path / "dup.json", [submit(job("z")), submit(job("x"))])
        res = qcgpj("submit", dup.name, *url, cwd=tmp_path)
        assert res.returncode == 1 and "'x'" in res.stderr and "already" in res.stderr
        assert qcgpj("status", "z", *url, cwd=tmp_path).returncode == 0   # the batch before it was written
    finally:
        cluster.stop()


def test_submit_counts_the_jobs_a_file_submitted_also_when_it_removes_them(tmp_path, redis_url):
    """A file that submits a job, cancels and removes it said 'submitted 0 job(s)'."""
    write(tmp_path / "jobs.json", [submit(job("q")), submit(job("r")), {"request": "cancelJob", "jobNames": ["q"]},
                                   {"request": "removeJob", "jobNames": ["q"]}])
    res = qcgpj("submit", "jobs.json", "--redis-url", redis_url, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == "submitted 2 job(s)"


# ---------------------------------------------------------------------- sizes fixed at submit
def sized(name: str, n: int, scheduler: dict | str) -> dict:
    return job(name, f"echo $QCGPJ_NCORES > {name}_${{it}}", iteration={"stop": n},
               resources={"numCores": {"min": 1, "scheduler": scheduler}})


def test_whole_nodes_and_iteration_schedulers_size_against_the_machine(tmp_path):
    write(tmp_path / "sized.json", [submit(
        sized("mi", 2, "maximum-iters"), sized("si", 2, {"name": "split-into", "params": {"parts": 4}}),
        sized("rounds", 12, {"name": "maximum-iters"}),
        job("whole", "echo $QCGPJ_NCORES $QCGPJ_NNODES > whole", resources={"numNodes": {"exact": 2}}),
        {"name": "plain", "execution": {"exec": "true", "venv": "", "modules": []}})])
    res = qcgpj("run", "sized.json", "--nodes", "n0:4,n1:4", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    got = {p.name: p.read_text().split() for p in tmp_path.iterdir() if p.name[:2] in ("mi", "si", "ro", "wh")}
    assert got["mi_0"] == got["mi_1"] == ["4"] and got["si_0"] == got["si_1"] == ["2"]
    rounds = [got[f"rounds_{i}"] for i in range(12)]   # 12 on 8: two rounds of 6, 8 cores each (QCG-PilotJob's)
    assert rounds == [["1"]] * 4 + [["2"]] * 2 + [["1"]] * 4 + [["2"]] * 2
    assert got["whole"] == ["8", "2"]


def test_maximum_iters_gives_unequal_shares_as_qcg_pilotjob_does(tmp_path):
    """Cores that do not divide evenly: QCG-PilotJob's maximum-iters gives a round's last iterations one more
    (10 cores over 3: 3, 3, 4; its iterscheduler.py), qcgpj gave every iteration the least share (3, 3, 3) and
    left a core idle. Now each iteration gets QCG-PilotJob's share, of cores or of nodes, every core used."""
    def nodes_job(name: str, n: int) -> dict:
        return job(name, f"echo $QCGPJ_NCORES $QCGPJ_NNODES > {name}_${{it}}", iteration={"stop": n},
                   resources={"numNodes": {"min": 1, "scheduler": {"name": "maximum-iters"}}})
    two = job("two", "echo $QCGPJ_NCORES > two_${it}", iteration={"stop": 7},
              resources={"numCores": {"min": 2, "scheduler": {"name": "maximum-iters"}}})
    per_it = {**sized("per", 3, "maximum-iters"), "dependencies": {"after": ["three:${it}"]}}   # placed one by one
    write(tmp_path / "spread.json", [submit(sized("three", 3, "maximum-iters"), two, nodes_job("nodes", 3), per_it)])
    res = qcgpj("run", "spread.json", "--nodes", "n0:2,n1:2,n2:2,n3:2,n4:2", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr

    def got(name: str, n: int) -> list[str]:
        return [(tmp_path / f"{name}_{i}").read_text().strip() for i in range(n)]
    assert got("three", 3) == got("per", 3) == ["3", "3", "4"]      # 10 cores, one round
    assert got("two", 7) == ["2", "2", "3", "3", "3", "3", "4"]     # at least 2 each: rounds of 4 and 3
    assert got("nodes", 3) == ["2 1", "4 2", "4 2"]                 # 5 nodes of 2 cores: 1, 2 and 2 nodes
    assert "maximum-iters" not in res.stderr


def test_an_iteration_scheduler_on_num_nodes_sizes_the_nodes(tmp_path):
    """A scheduler under numNodes (QCG-PilotJob's schedulers apply to cores and to nodes) was ignored: with
    numNodes {"min": 1, "scheduler": split-into} each of 2 iterations took both nodes of 4 and they ran one after
    the other, instead of one node each side by side."""
    def nodes_job(name: str, n: int, scheduler: dict, **res) -> dict:
        return job(name, f"echo $QCGPJ_NCORES $QCGPJ_NNODES > {name}_${{it}}", iteration={"stop": n},
                   resources={"numNodes": {"min": 1, "scheduler": scheduler}, **res})
    write(tmp_path / "nodes.json", [submit(
        nodes_job("sp", 2, {"name": "split-into"}), nodes_job("mi", 4, {"name": "maximum-iters"}, numCores=2),
        nodes_job("one", 1, {"name": "maximum-iters"}))])
    res = qcgpj("run", "nodes.json", "--nodes", "n0:4,n1:4", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    got = {p.name: p.read_text().split() for p in tmp_path.iterdir() if p.name[:2] in ("sp", "mi", "on")}
    assert got["sp_0"] == got["sp_1"] == ["4", "1"]                          # one whole node each
    assert {tuple(got[f"mi_{i}"]) for i in range(4)} == {("2", "1")}          # 2 cores on one node each
    assert got["one_0"] == ["8", "2"]                                          # one iteration: every node


def test_a_scheduler_on_both_counts_is_refused():
    sched = {"min": 1, "scheduler": {"name": "split-into"}}
    with pytest.raises(JobSpecError) as err:
        parse_requests(json.dumps([submit(job("s", iteration={"stop": 2},
                                              resources={"numCores": sched, "numNodes": sched}))]))
    assert err.value.job == "s" and "numNodes" in err.value.message


@pytest.mark.parametrize("count, iteration, field, words", [
    ({"min": 1, "max": 2, "scheduler": {"name": "maximum-iters"}}, {"stop": 2}, "scheduler", "give 'min' only"),
    ({"max": 2, "scheduler": {"name": "split-into"}}, {"stop": 2}, "scheduler", "give 'min' only"),
    ({"exact": 2, "scheduler": {"name": "maximum-iters"}}, None, "scheduler", "not with 'exact'"),
    ({"min": 1, "scheduler": {"name": 5}}, {"stop": 2}, "scheduler.name", "must be a scheduler's name"),
    ({"min": 1, "scheduler": {"name": "split-into", "params": [2]}}, {"stop": 2}, "scheduler.params", "object"),
    ({"min": 1, "scheduler": {"name": "split-into", "params": {"parts": 0}}}, {"stop": 2}, "scheduler.params.parts",
     "positive")])
def test_bad_schedulers(count, iteration, field, words):
    """What QCG-PilotJob refuses too (its ResourceSize, its schedulers' InvalidRequest, or a crash on a name or
    params of the wrong type): one line naming the job and the field."""
    with pytest.raises(JobSpecError) as err:
        parse_requests(json.dumps([submit(job("s", resources={"numCores": count}, iteration=iteration))]))
    assert (err.value.job, err.value.field) == ("s", "resources.numCores." + field) and words in err.value.message


@pytest.mark.parametrize("count, iteration, sizing, cores", [
    ({"max": 4, "scheduler": {"name": "maximum-iters"}}, None, None, (1, 4)),
    ({"min": 2, "max": 4, "scheduler": {"name": "split-into", "params": {"parts": 2}}}, None, None, (2, 4)),
    ({"min": 1, "scheduler": {"name": "Maximum-Iters"}}, {"stop": 2}, ("maximum-iters", 0, False, False), (1, None)),
    ({"min": 1, "scheduler": {"name": "SPLIT-INTO", "params": {"parts": "4"}}}, {"stop": 2},
     ("split-into", 4, False, False), (1, None)),
    ({"min": 1, "scheduler": {"name": "fastest"}}, {"stop": 2}, ("maximum-iters", 0, False, False), (1, None))])
def test_schedulers_as_qcg_pilotjob_takes_them(count, iteration, sizing, cores, caplog):
    """Refused here, taken by QCG-PilotJob: a scheduler on a job without iterations (which it ignores: the job
    takes its range, 'max' too), a name in any case, an unknown name (its default, maximum-iters; here with a
    warning), split-into's parts as text (it takes int(parts))."""
    s = parse_requests(json.dumps([submit(job("s", resources={"numCores": count}, iteration=iteration))]))[0].jobs[0]
    assert (s.sizing, (s.cores_min, s.cores_max)) == (sizing, cores)
    assert ("taken as maximum-iters" in caplog.text) == (count["scheduler"]["name"] == "fastest"), caplog.text


def test_a_single_job_with_a_scheduler_and_a_max_runs_on_its_range(tmp_path):
    """QCG-PilotJob sizes iterations only: a job without iterations takes its numCores range, 'max' included,
    where qcgpj refused 'max' next to a scheduler; a scheduler's name in another case sizes as that scheduler."""
    write(tmp_path / "jobs.json", [submit(
        job("one", "echo $QCGPJ_NCORES > one", resources={"numCores": {"max": 2, "scheduler": "maximum-iters"}}),
        sized("mi", 2, {"name": "Maximum-Iters"}))])
    res = qcgpj("run", "jobs.json", "--cores", "4", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    got = {p.name: p.read_text().split() for p in tmp_path.iterdir() if p.name[:2] in ("on", "mi")}
    assert got == {"one": ["2"], "mi_0": ["2"], "mi_1": ["2"]}


def test_a_scheduler_that_leaves_too_few_cores_is_refused(tmp_path):
    big = sized("big", 2, {"name": "split-into", "params": {"parts": 4}})
    big["resources"]["numCores"]["min"] = 2
    write(tmp_path / "few.json", [big])
    res = qcgpj("run", "few.json", "--cores", "4", cwd=tmp_path)
    assert res.returncode == 1 and "job 'big'" in res.stderr and "1 core(s) of the 4" in res.stderr


def test_tasks_see_qcg_pilotjob_variables(tmp_path):
    names = ["QCG_PM_NNODES", "QCG_PM_NODELIST", "QCG_PM_NPROCS", "QCG_PM_NTASKS", "QCG_PM_TASKS_PER_NODE",
             "QCG_PM_CPU_SET", "QCG_PM_STEP_ID", "QCG_PM_EXEC_API_JOB_ID"]
    show = " ".join(f"${n}" for n in names)
    write(tmp_path / "env.json", [
        job("one", resources={"numCores": {"exact": 2}},
            execution={"script": f"echo {show} > one.txt", "env": {"QCG_PM_EXEC_API_JOB_ID": "${jname}"}}),
        job("two", f"echo {show} > two.txt", resources={"numCores": {"exact": 1}, "numNodes": {"exact": 2}})])
    res = qcgpj("run", "env.json", "--nodes", "n0:2,n1:2", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    one = (tmp_path / "one.txt").read_text().split()
    two = (tmp_path / "two.txt").read_text().split()
    assert one[:6] == ["1", "n0", "2", "2", "2", "0,1"] and one[6] and one[7] == "one"
    assert two[:5] == ["2", "n0,n1", "2", "2", "1,1"] and len(two[5].split(",")) == 2 and two[6] == "two"
