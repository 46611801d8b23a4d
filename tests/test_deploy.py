"""deploy/: the Slurm scripts and the Kubernetes manifests, checked without a cluster.

Every manifest is parsed (PyYAML) and every script read; each ``atml ...`` command they run
(a container's command, a ``sh -c`` script, a line of a script) is extracted, its variables
filled in as the cluster would (a container's environment from its ConfigMap and Secret,
a script's own defaults) and parsed by the real ``atml`` argument parser, so a subcommand
or a flag the CLI lacks fails here. A variable with no value stands for ``1``, which every
str, int and float option accepts; a flag behind ``${VAR:+...}`` is checked as if VAR were
set. The ``ATML_*`` names must be ones the CLI reads, and the worker count and GPU requests
must be plain fields where an operator looks for them.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from atml.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SLURM = DEPLOY / "slurm"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
SCRIPTS = sorted([*SLURM.glob("*.sh"), *SLURM.glob("*.sbatch")])
UNSET = "1"  # what a variable without a value becomes: valid for str, int and float options
# What a Slurm user exports before submitting (the scripts refuse to start without them).
SLURM_ENV = {"ATML_STORAGE": "postgresql+psycopg://atml@dbhost:5432/atml", "ATML_ARTIFACTS": "/shared/atml"}


# --------------------------------------------------------------------------- shell


_VAR = re.compile(r"\$\{(\w+)(?:(:?[-=+?])((?:[^{}]|\{[^{}]*\})*))?\}|\$(\w+)")


def expand(text: str, known: dict[str, str]) -> str:
    """Shell parameter expansion as far as the scripts use it (no command substitution)."""

    def sub(m: re.Match) -> str:
        name, op, word = (m.group(1), m.group(2), m.group(3)) if m.group(1) else (m.group(4), None, None)
        value = known.get(name)
        if op in (":-", "-", ":=", "="):
            return value if value else expand(word, known)
        if op in (":+", "+"):
            return expand(word, known)  # checked as if set: the flag behind it must exist too
        return value if value is not None else UNSET

    return _VAR.sub(sub, text)


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined, comments and blank lines dropped."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            out.append(s)
    return out


def script_defaults(text: str, known: dict[str, str]) -> dict[str, str]:
    """``known`` plus the values the script's top-level assignments (``X=...``, ``export X=...``) give."""
    env = dict(known)
    for line in logical_lines(text):
        m = re.match(r"^(?:export\s+)?(\w+)=(\S*)", line)
        if m:
            value = shlex.split(m.group(2), comments=True) or [""]
            env[m.group(1)] = expand(value[0], env)
    return env


SEPARATORS = {";", "&&", "||", "|", "&", ")", "(", ";;"}
COMMAND_START = SEPARATORS | {"exec", "do", "then", "else", "until", "while", "if", "!", "time"}


def shell_commands(script: str, known: dict[str, str]) -> list[list[str]]:
    """The argv (after ``atml``) of every ``atml`` command of ``script``."""
    out = []
    for line in logical_lines(script):
        lex = shlex.shlex(expand(line, known), posix=True, punctuation_chars=";&|()")
        lex.whitespace_split = True
        lex.commenters = "#"
        tokens = list(lex)
        for i, tok in enumerate(tokens):
            if tok == "atml" and (i == 0 or tokens[i - 1] in COMMAND_START):
                argv = []
                for t in tokens[i + 1:]:
                    if t in SEPARATORS:
                        break
                    argv.append(t)
                out.append(argv)
    return out


# --------------------------------------------------------------------------- Kubernetes


def documents() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in MANIFESTS}


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for docs in documents().values() for d in docs if d["kind"] == kind}


def pod_specs() -> list[tuple[str, dict]]:
    """``(file:kind/name, pod spec)`` of every workload."""
    out = []
    for name, docs in documents().items():
        for d in docs:
            if d["kind"] in ("Job", "Deployment", "StatefulSet"):
                out.append((f"{name}:{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]))
    return out


def container_env(c: dict) -> dict[str, str]:
    """A container's environment as the kubelet builds it from literal values, ConfigMaps and Secrets."""
    maps, secrets = by_kind("ConfigMap"), by_kind("Secret")
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            env.update({k: str(v) for k, v in maps[src["configMapRef"]["name"]]["data"].items()})
        if "secretRef" in src:
            env.update({k: str(v) for k, v in secrets[src["secretRef"]["name"]]["stringData"].items()})
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), str(e["value"]))
            continue
        ref = e["valueFrom"].get("secretKeyRef") or e["valueFrom"].get("configMapKeyRef")
        source = secrets if "secretKeyRef" in e["valueFrom"] else maps
        doc = source.get(ref["name"])
        if doc is None:
            assert ref.get("optional"), f"{c['name']}: {e['name']} reads {ref['name']}, which no manifest defines"
            continue
        data = doc.get("stringData", doc.get("data", {}))
        assert ref["key"] in data, f"{c['name']}: {e['name']}: no key {ref['key']} in {ref['name']}"
        env[e["name"]] = str(data[ref["key"]])
    return env


def k8s_commands() -> list[tuple[str, list[str], dict[str, str]]]:
    out = []
    for where, spec in pod_specs():
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            env = container_env(c)
            argv = [re.sub(r"\$\((\w+)\)", lambda m, env=env: env.get(m.group(1), UNSET), str(a))
                    for a in [*c.get("command", []), *c.get("args", [])]]
            label = f"{where}:{c['name']}"
            if argv[:1] == ["atml"]:
                out.append((label, argv[1:], env))
            elif argv[:2] in (["sh", "-c"], ["bash", "-c"]):
                out += [(label, a, env) for a in shell_commands(argv[2], env)]
    return out


def slurm_commands() -> list[tuple[str, list[str], dict[str, str]]]:
    out = []
    for p in SCRIPTS:
        known = script_defaults(p.read_text(), SLURM_ENV)
        out += [(p.name, argv, known) for argv in shell_commands(p.read_text(), known)]
    return out


@dataclass(frozen=True)
class Invocation:
    where: str
    argv: list[str]
    env: dict[str, str]

    def __str__(self) -> str:
        return f"{self.where}: atml {' '.join(self.argv)}"


INVOCATIONS = [Invocation(w, a, e) for w, a, e in k8s_commands() + slurm_commands()]


def parse(inv: Invocation, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Any:
    """``inv`` parsed by the real ``atml`` parser, built in the invocation's environment."""
    import os

    for k in list(os.environ):
        if k.startswith("ATML_"):
            monkeypatch.delenv(k)
    for k, v in inv.env.items():
        if k.startswith("ATML_"):
            monkeypatch.setenv(k, v)
    try:
        return build_parser().parse_args(inv.argv)
    except SystemExit:
        pytest.fail(f"{inv}\n  is not a valid atml invocation: {capsys.readouterr().err.strip()}")


# --------------------------------------------------------------------------- tests


def test_every_manifest_and_script_is_found_and_parses():
    assert {p.name for p in MANIFESTS} >= {"secret.yaml", "workers-job.yaml", "dashboard.yaml", "postgres.yaml",
                                           "create-study-job.yaml", "pvc.yaml"}
    assert {p.name for p in SCRIPTS} == {"workers.sbatch", "create_study.sh"}
    kinds = {d["kind"] for docs in documents().values() for d in docs}
    assert kinds >= {"Secret", "ConfigMap", "PersistentVolumeClaim", "Job", "Deployment", "Service", "StatefulSet"}
    kustom = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustom["resources"]) == sorted(p.name for p in MANIFESTS), "kustomization lists every manifest"
    for p in SCRIPTS:
        r = subprocess.run(["bash", "-n", str(p)], capture_output=True, text=True)
        assert r.returncode == 0, f"{p.name}: {r.stderr}"
        assert p.read_text().startswith("#!/usr/bin/env bash\n")


def test_the_commands_are_the_expected_ones():
    got = sorted((i.where.split(":")[0], i.argv[0]) for i in INVOCATIONS)
    assert got == sorted([
        ("create-study-job.yaml", "search"), ("workers-job.yaml", "studies"), ("workers-job.yaml", "worker"),
        ("dashboard.yaml", "dashboard"), ("create_study.sh", "search"), ("workers.sbatch", "worker"),
    ]), got


@pytest.mark.parametrize("inv", INVOCATIONS, ids=str)
def test_every_atml_command_is_a_valid_invocation(inv: Invocation, monkeypatch, capsys):
    args = parse(inv, monkeypatch, capsys)
    assert args.command == inv.argv[0]
    if hasattr(args, "storage"):
        assert args.storage == inv.env["ATML_STORAGE"], "the database URL comes from ATML_STORAGE"
    if hasattr(args, "artifacts"):
        assert args.artifacts == inv.env["ATML_ARTIFACTS"], "the artifacts folder comes from ATML_ARTIFACTS"
    with pytest.raises(SystemExit) as e:  # and `atml <command> ... --help` prints that command's help
        build_parser().parse_args([*inv.argv, "--help"])
    assert e.value.code == 0 and f"usage: atml {inv.argv[0]}" in capsys.readouterr().out


def _cli_env_names() -> set[str]:
    """Every ATML_* variable the CLI reads: ``env("X")`` (atml.cli.common.env) in atml/cli."""
    names = set()
    for path in (ROOT / "atml" / "cli").rglob("*.py"):
        names |= {f"ATML_{n}" for n in re.findall(r"\benv\(\s*\"(\w+)\"", path.read_text())}
    return names


def test_environment_names_agree_with_the_cli():
    known = _cli_env_names()
    assert {"ATML_STORAGE", "ATML_ARTIFACTS", "ATML_THREADS", "ATML_DASHBOARD_TOKEN"} <= known
    files = [*MANIFESTS, K8S / "kustomization.yaml", *SCRIPTS, *DEPLOY.glob("Dockerfile*"), *DEPLOY.rglob("README.md")]
    used = {}
    for p in files:
        for name in re.findall(r"\bATML_[A-Z0-9_]+\b", p.read_text()):
            used.setdefault(name, p.name)
    assert {"ATML_STORAGE", "ATML_ARTIFACTS"} <= set(used)
    unknown = {n: f for n, f in used.items() if n not in known}
    assert not unknown, f"ATML_* names no atml command reads: {unknown}"


def _worker_job() -> dict:
    return by_kind("Job")["atml-workers"]


def test_worker_count_and_gpus_are_parameters_of_the_k8s_job():
    job = _worker_job()
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert isinstance(spec["parallelism"], int) and spec["parallelism"] >= 1
    assert spec["completions"] == spec["parallelism"], "one completion per worker"
    (worker,) = spec["template"]["spec"]["containers"]
    res = worker["resources"]
    assert isinstance(res["limits"]["nvidia.com/gpu"], int) and res["limits"]["nvidia.com/gpu"] >= 1
    assert container_env(worker)["ATML_THREADS"] == str(res["requests"]["cpu"]), "torch threads = CPUs requested"
    assert worker["command"][:2] == ["atml", "worker"] and "--device" in worker["command"]
    assert worker["command"][worker["command"].index("--device") + 1] == "cuda"
    knobs = (K8S / "kustomization.yaml").read_text()
    for knob in ("parallelism", "completions", "nvidia.com/gpu"):
        assert knob in knobs, f"kustomization.yaml's header names the knob {knob}"


def _sbatch(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^#SBATCH\s+--([\w-]+)(?:=(\S+))?", line)
        if m:
            out[m.group(1)] = m.group(2) or ""
    return out


def test_worker_count_and_gpus_are_parameters_of_the_slurm_array():
    d = _sbatch(SLURM / "workers.sbatch")
    assert re.fullmatch(r"0-\d+(%\d+)?", d["array"]), d["array"]
    assert d["gres"] == "gpu:1", "one GPU per array task: one worker on it"
    assert "cpus-per-task" in d
    (worker,) = [i for i in INVOCATIONS if i.where == "workers.sbatch"]
    assert worker.argv[worker.argv.index("--device") + 1] == "cuda"
    assert worker.env["ATML_THREADS"] == "4" == d["cpus-per-task"], "threads follow SLURM_CPUS_PER_TASK"
    assert "gres" not in _sbatch(SLURM / "create_study.sh"), "creating the study needs no GPU"


def test_the_study_is_created_once_and_joined_by_the_workers(monkeypatch, capsys):
    for where in ("create-study-job.yaml", "create_study.sh"):
        (inv,) = [i for i in INVOCATIONS if i.where.startswith(where)]
        args = parse(inv, monkeypatch, capsys)
        assert args.command == "search" and args.workers == 0, "--workers 0: create the study, run no trials"
        assert (ROOT / args.space).is_file(), args.space
        assert args.data in (None, "", UNSET)
        joiners = [i for i in INVOCATIONS if i.argv[0] == "worker" and
                   (i.where.endswith(".sbatch") == where.endswith(".sh"))]
        for w in joiners:
            assert parse(w, monkeypatch, capsys).study == args.study, f"{w} joins the study {where} creates"
    # Kubernetes: the workers wait for the study, the Job retries while PostgreSQL starts.
    init = _worker_job()["spec"]["template"]["spec"]["initContainers"]
    assert any("atml studies" in " ".join(c["command"]) for c in init)
    assert by_kind("Job")["atml-create-study"]["spec"]["backoffLimit"] >= 3


def test_wiring_volumes_database_and_dashboard():
    pvc = by_kind("PersistentVolumeClaim")
    assert pvc["atml-shared"]["spec"]["accessModes"] == ["ReadWriteMany"], "workers on many nodes write to it"
    for where, spec in pod_specs():
        if "postgres" in where:
            continue
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]}
        for c in spec["containers"]:
            mounts = {m["mountPath"]: claims[m["name"]] for m in c["volumeMounts"]}
            assert mounts.get("/shared") == "atml-shared", where
            assert container_env(c)["ATML_ARTIFACTS"].startswith("/shared/"), where
            assert c["image"] == "atml", f"{where}: the image kustomization.yaml names"
    # the database URL names the PostgreSQL Service and its password is the StatefulSet's
    url = by_kind("Secret")["atml-storage"]["stringData"]["ATML_STORAGE"]
    m = re.fullmatch(r"postgresql\+psycopg://(\w+):([^@]+)@([\w-]+):(\d+)/(\w+)", url)
    assert m, url
    user, password, host, port, db = m.groups()
    assert host in by_kind("Service") and by_kind("Service")[host]["spec"]["ports"][0]["port"] == int(port)
    pg = by_kind("StatefulSet")[host]["spec"]["template"]["spec"]["containers"][0]
    pg_env = container_env(pg)
    assert (pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], pg_env["POSTGRES_DB"]) == (user, password, db)
    assert "external PostgreSQL" in (K8S / "postgres.yaml").read_text()
    # the dashboard listens on all interfaces, on the port its Service and probe use
    dash = by_kind("Deployment")["atml-dashboard"]["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(dash["command"][1:])
    assert args.host == "0.0.0.0"
    port_names = {p["name"]: p["containerPort"] for p in dash["ports"]}
    assert port_names["http"] == args.port
    svc = by_kind("Service")["atml-dashboard"]["spec"]
    assert svc["ports"][0]["targetPort"] == "http" and svc["selector"] == {"app": "atml-dashboard"}
    assert dash["readinessProbe"]["httpGet"]["path"] == "/api/health"


def test_cuda_image_installs_a_cuda_build_the_package_accepts():
    from packaging.specifiers import SpecifierSet

    text = (DEPLOY / "Dockerfile.cuda").read_text()
    m = re.search(r"^RUN pip install torch==([\d.]+)\s*$", text, re.M)
    assert m, "the default PyPI wheel (CUDA build), no CPU index"
    assert "whl/cpu" not in text.split("RUN pip install torch")[1].splitlines()[0]
    spec = re.search(r'"torch([^"]*)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert m.group(1) in SpecifierSet(spec)
    assert "WORKDIR /app" in text and "COPY search_spaces" in text, "the k8s Job's --space is relative to /app"


def test_expansion_helpers():
    known = {"A": "x", "E": ""}
    assert expand("${A:-d} ${B:-d} ${E:-d} $A ${A} $NOPE", known) == "x d d x x 1"
    assert expand('${E:+--data "$E"}', known) == '--data ""'
    assert shell_commands('until atml studies | grep -q "^x "; do sleep 1; done', {}) == [["studies"]]
    assert shell_commands("exec atml worker --study a # comment", {}) == [["worker", "--study", "a"]]
    assert shell_commands("pg_isready -U atml -d atml", {}) == []
