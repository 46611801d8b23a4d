"""docker-compose.yml and Dockerfile, checked without a Docker engine: the services and
their wiring, and every command run through the real `atml` CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ATML_SERVICES = ("dashboard", "worker", "search")


def _interpolate(value: str) -> str:
    """Compose variable interpolation with an empty environment: the documented defaults."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        default = m.group(3)
        return default if default is not None else ""

    return re.sub(r"\$\$|\$\{(\w+)(:?-(.*?))?\}", sub, value)


def _resolve(obj):
    if isinstance(obj, str):
        return _interpolate(obj)
    if isinstance(obj, list):
        return [_resolve(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _resolve(v) for k, v in obj.items()}
    return obj


@pytest.fixture(scope="module")
def compose() -> dict:
    raw = yaml.safe_load(COMPOSE.read_text())  # PyYAML resolves the `<<: *atml` merge keys
    return _resolve(raw)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _env_of(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _argv(svc: dict) -> list[str]:
    cmd = svc["command"]
    argv = cmd if isinstance(cmd, list) else cmd.split()
    assert argv[0] == "atml", argv
    return [str(a) for a in argv[1:]]


def test_services_and_wiring(services, compose):
    assert set(services) >= {"postgres", "dashboard", "worker", "search"}
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:15")
    hc = pg["healthcheck"]["test"]
    assert any("pg_isready" in part for part in hc)
    named = set(compose["volumes"])
    data_volume = next(v.split(":")[0] for v in pg["volumes"] if v.split(":")[1] == "/var/lib/postgresql/data")
    assert data_volume in named, "PostgreSQL data lives in a named volume"
    for name in ("dashboard", "worker"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy", name
    # one shared named volume for the artifact store, passed as --artifacts
    mounts = {}
    for name in ATML_SERVICES:
        svc = services[name]
        vol = [v for v in svc["volumes"] if v.split(":")[1] == "/artifacts"]
        assert vol, f"{name} mounts the artifact store"
        mounts[name] = vol[0].split(":")[0]
        argv = _argv(svc)
        assert argv[argv.index("--artifacts") + 1] == "/artifacts", name
    assert len(set(mounts.values())) == 1 and mounts["worker"] in named
    # the worker scales: nothing that names or pins one container
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert "search" in services["search"].get("profiles", []), "search is a one-shot behind a profile"


def test_no_secret_hard_coded():
    raw = yaml.safe_load(COMPOSE.read_text())
    for name, svc in raw["services"].items():
        for var, value in _env_of(svc).items():
            if re.search("PASSWORD|TOKEN|SECRET", var):
                assert value.startswith("${"), f"{name}: {var} is set from the environment, with a default at most"
            for creds in re.findall(r"://([^@/\s]+)@", value):
                assert ":" not in creds or creds.split(":", 1)[1].startswith("${"), f"{name}: {var}"


def _cli_env_names() -> set[str]:
    """Every ATML_* variable the package reads: `env("X")` (atml.cli.common.env, used by the
    command modules of atml/cli/) and ATML_* literals anywhere in the package."""
    names = set()
    for path in (ROOT / "atml").rglob("*.py"):
        text = path.read_text()
        names |= {f"ATML_{n}" for n in re.findall(r"\benv\(\s*\"(\w+)\"", text)}
        names |= set(re.findall(r"[\"'](ATML_[A-Z_]+)[\"']", text))
    return names


def test_environment_names_agree_with_the_cli(services):
    known = _cli_env_names()
    assert {"ATML_STORAGE", "ATML_ARTIFACTS"} <= known
    for name in ATML_SERVICES:
        env = _env_of(services[name])
        assert env["ATML_STORAGE"].startswith("postgresql+psycopg://") and "@postgres:5432/" in env["ATML_STORAGE"]
        assert env["ATML_ARTIFACTS"] == "/artifacts"
        for var in env:
            if var.startswith("ATML_"):
                assert var in known, f"{name}: {var} is read by no atml command"


@pytest.mark.parametrize("name", ATML_SERVICES)
def test_command_is_a_valid_atml_invocation(services, name):
    svc = services[name]
    argv = _argv(svc)
    env = {**os.environ, **_env_of(svc)}
    r = subprocess.run([sys.executable, "-m", "atml", *argv, "--help"], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"atml {argv[0]}" in r.stdout


@pytest.mark.parametrize("name", ATML_SERVICES)
def test_command_parses_with_the_service_environment(services, name, monkeypatch):
    svc = services[name]
    env = _env_of(svc)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from atml.cli.main import build_parser

    args = build_parser().parse_args(_argv(svc))  # defaults are read from the environment now
    assert args.storage == env["ATML_STORAGE"], "storage comes from ATML_STORAGE"
    assert args.artifacts == "/artifacts"
    if name == "worker":
        assert args.study == "afib" and args.threads == 1
    if name == "search":
        assert args.workers == 0, "search only creates the study; the scaled worker service runs the trials"
        assert (ROOT / args.space).is_file(), args.space
        assert args.study == "afib" == _argv(services["worker"])[2], "search creates the study the workers join"
    if name == "dashboard":
        published = [p for p in svc["ports"] if str(p).endswith(f":{args.port}")]
        assert args.host == "0.0.0.0" and published, (args.port, svc["ports"])


def test_dockerfile_builds_the_cli_image():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    m = re.search(r"pip install torch==([\d.]+) --index-url https://download\.pytorch\.org/whl/cpu", text)
    assert m, "CPU-only torch from the PyTorch CPU index"
    from packaging.specifiers import SpecifierSet

    pyproject = (ROOT / "pyproject.toml").read_text()
    spec = re.search(r'"torch([^"]*)"', pyproject).group(1)
    assert m.group(1) in SpecifierSet(spec), f"torch {m.group(1)} outside the package's {spec}"
    assert re.search(r"pip install \.", text), "installs the package (console script `atml`)"
    for path in ("pyproject.toml", "atml", "search_spaces"):
        assert path in text and (ROOT / path).exists()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", "studies"} <= set(ignored)
