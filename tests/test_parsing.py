"""The parsing layers on their own: Slurm's syntax, the job format's fields, and core allocation."""
from __future__ import annotations

import pytest

from qcgpj import DependencyError, Jobs, JobSpecError
from qcgpj.batch import check_batch, parse_jobs_text
from qcgpj.jobspec import Dependency, JobSpec, parse_job, parse_walltime, substitute
from qcgpj.resources import Allocation, CoreAllocator, Node, discover, expand_hostlist, parse_cpus_per_node


@pytest.mark.parametrize("text, hosts", [
    ("node1", ["node1"]),
    ("node[1-3]", ["node1", "node2", "node3"]),
    ("n[1-2,5]", ["n1", "n2", "n5"]),
    ("a[01-03]b", ["a01b", "a02b", "a03b"]),
    ("x1,y[7-8],z", ["x1", "y7", "y8", "z"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
])
def test_slurm_hostlists(text, hosts):
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("text, n, counts", [
    ("4(x8)", 8, [4] * 8), ("3,1", 2, [3, 1]), ("8(x2),4", 3, [8, 8, 4]), ("16", 1, [16]),
])
def test_slurm_cpus_per_node(text, n, counts):
    assert parse_cpus_per_node(text, n) == counts


def test_slurm_cpus_per_node_must_match_the_nodes():
    with pytest.raises(ValueError, match="gives 2 nodes"):
        parse_cpus_per_node("4(x2)", 3)


def test_discovery_from_slurm_nodes_option_and_machine():
    env = {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "c[1-2]", "SLURM_JOB_CPUS_PER_NODE": "3,1"}
    assert [(n.name, n.cores) for n in discover(environ=env)] == [("c1", (0, 1, 2)), ("c2", (0,))]
    assert discover(environ={**env, "SLURM_MEM_PER_NODE": "2048"})[0].mem == 2048   # else this machine's
    assert discover(nodes="a:2,b:1", environ=env) == [Node("a", (0, 1)), Node("b", (0,))]
    local = discover(cores=1, environ={})
    assert len(local) == 1 and len(local[0].cores) == 1
    with pytest.raises(ValueError):
        discover(nodes="a:x")


def test_allocator_packs_spreads_and_releases():
    alloc = CoreAllocator([Node("n1", (0, 1, 2, 3)), Node("n2", (0, 1))])
    small = alloc.allocate(2)
    assert small.parts == (("n2", (0, 1)),)              # best fit: the node it fills
    assert alloc.allocate(3).parts == (("n1", (0, 1, 2)),)
    assert alloc.allocate(2) is None                      # 1 core left
    alloc.release(small)
    two = alloc.allocate(2, nodes=2)
    assert two.parts == (("n1", (3,)), ("n2", (0,))) and two.nnodes == 2
    assert Allocation.from_text(two.to_text()) == two
    big = CoreAllocator([Node("n1", (0, 1)), Node("n2", (0, 1))]).allocate(4)
    assert big.ncores == 4 and big.nodes == ["n1", "n2"]  # larger than any node: spread


@pytest.mark.parametrize("text, seconds", [("1h2m3s", 3723), ("10m", 600), ("30s", 30), ("2h", 7200),
                                           ("1d", 86400), (90, 90), ("45", 45)])
def test_walltimes(text, seconds):
    assert parse_walltime(text) == seconds


@pytest.mark.parametrize("desc, field", [
    ({"name": "j", "execution": {"exec": "x"}, "resources": {"wt": "soon"}}, "resources.wt"),
    ({"name": "j", "execution": {"exec": "x"}, "resources": {"numCores": 0}}, "resources.numCores"),
    ({"name": "j", "execution": {"exec": "x"}, "resources": {"numCores": {"min": 4, "max": 2}}},
     "resources.numCores.max"),
    ({"name": "j", "execution": {"exec": "x"}, "resources": {"numCores": {"exact": 2, "min": 1}}},
     "resources.numCores"),
    ({"name": "j", "execution": {"exec": "x", "script": "y"}}, "execution"),
    ({"name": "j", "execution": {}}, "execution"),
    ({"name": "j", "execution": {"exec": "x", "args": [{}]}}, "execution.args[0]"),
    ({"name": "j", "execution": {"exec": "x", "env": {"A": [1]}}}, "execution.env.A"),
    ({"name": "j", "execution": {"exec": "x"}, "iteration": {"start": 5, "stop": 2}}, "iteration.stop"),
    ({"name": "j", "execution": {"exec": "x"}, "iteration": {"values": []}}, "iteration.values"),
    ({"name": "j", "execution": {"exec": "x"}, "dependencies": {"after": ["a:b"]}}, "dependencies.after"),
    ({"name": "j", "execution": {"exec": "x"}, "unknown": 1}, "unknown"),
    ({"name": "j", "execution": {"exec": "mod_without_function", "model": "python"}}, "execution.exec"),
])
def test_bad_fields_name_job_and_field(desc, field):
    with pytest.raises(JobSpecError) as err:
        parse_job(desc)
    assert err.value.job == "j" and err.value.field == field
    assert str(err.value).startswith(f"job 'j', field '{field}': ")


def test_forms_of_dependencies_and_iterations():
    assert Dependency.parse("a", "o") == Dependency("a")
    assert Dependency.parse("a:3", "o") == Dependency("a", iteration=3)
    assert Dependency.parse("a:${it}", "o") == Dependency("a", per_iteration=True)
    spec = parse_job({"name": "v", "execution": {"exec": "x"}, "iteration": {"values": ["p", "q"]}})
    assert spec.n_iterations == 2 and spec.iteration.value(1) == "q"
    assert Jobs().add(name="n", exec="x", iteration=4).jobs()[0].iteration.ids() == range(0, 4)


def test_stored_spec_round_trips():
    d = {"name": "r", "execution": {"exec": "x", "args": ["1", "${it}"], "env": {"A": "b"}, "stdout": "o.${it}",
                                    "model": "threads", "modules": ["m"], "venv": "v"},
         "resources": {"numCores": {"min": 2, "max": 4}, "numNodes": {"exact": 1}, "wt": "1h"},
         "dependencies": {"after": ["p", "q:2"]}, "iteration": {"start": 1, "stop": 3}, "attributes": {"k": 1}}
    spec = parse_job(d)
    again = JobSpec.from_json(spec.to_json())
    assert again == spec and parse_job(spec.to_dict()) == spec


def test_request_files():
    jobs, finish = parse_jobs_text('[{"request": "submit", "jobs": [{"name": "a", "execution": {"exec": "x"}}]},'
                                   ' {"request": "control", "command": "finishAfterAllTasksDone"}]')
    assert [j.name for j in jobs] == ["a"] and finish
    with pytest.raises(JobSpecError, match="malformed JSON at line 1"):
        parse_jobs_text("[{")
    with pytest.raises(JobSpecError, match="unknown request"):
        parse_jobs_text('[{"request": "explode"}]')


def test_batch_checks():
    a = parse_job({"name": "a", "execution": {"exec": "x"}, "iteration": {"stop": 3}})
    b = parse_job({"name": "b", "execution": {"exec": "x"}, "dependencies": {"after": ["a:${it}"]}})
    with pytest.raises(DependencyError, match="same iterations"):
        check_batch([a, b])
    c = parse_job({"name": "c", "execution": {"exec": "x"}, "dependencies": {"after": ["a:7"]}})
    with pytest.raises(DependencyError, match="names no iteration"):
        check_batch([a, c])
    d = parse_job({"name": "d", "execution": {"exec": "x"}, "dependencies": {"after": ["elsewhere"]}})
    assert check_batch([a, d]) == {"elsewhere"}


def test_substitution_leaves_shell_variables_alone():
    assert substitute("${it}-${HOME}-${jname}", {"it": "3", "jname": "j"}) == "3-${HOME}-j"
