"""The ``atml`` console script, run as a user runs it (the venv's ``atml``, a subprocess):
every command is listed and has a help, usage and user errors exit 2 with one line,
and the CLI's import is light."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ATML = str(Path(sys.executable).with_name("atml"))
COMMANDS = ("search", "worker", "studies", "compare", "export", "evaluate", "dashboard", "avoid", "gate",
            "storage-proxy", "backup")
SUBCOMMANDS = (("avoid", "list"), ("avoid", "clear"), ("avoid", "export"), ("gate", "list"), ("gate", "sync"))
HEAVY = ("torch", "fastapi", "optuna")


def _atml(*argv: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([ATML, *argv], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def test_the_table_is_the_documented_command_list():
    from atml.cli.main import COMMANDS as table

    assert tuple(table) == COMMANDS


def test_help_lists_every_command():
    r = _atml("--help")
    assert r.returncode == 0, r.stderr
    assert "AutoML search for ECG classifiers." in r.stdout
    assert "{" + ",".join(COMMANDS) + "}" in r.stdout
    for name in COMMANDS:
        assert f"\n    {name} " in r.stdout, name


def test_version():
    from atml import __version__

    r = _atml("--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"atml {__version__}")


@pytest.mark.parametrize("argv", [(c,) for c in COMMANDS] + list(SUBCOMMANDS), ids=" ".join)
def test_each_command_has_a_help(argv):
    r = _atml(*argv, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: atml {' '.join(argv)} "), r.stdout[:200]


@pytest.mark.parametrize("argv", [("nope",), (), ("avoid",), ("gate", "nope"), ("worker",)], ids=repr)
def test_usage_errors_exit_2(argv):
    r = _atml(*argv)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == "" and "usage: atml" in r.stderr and "Traceback" not in r.stderr


def test_unknown_command_names_the_choices():
    r = _atml("nope")
    assert r.returncode == 2
    assert "invalid choice: 'nope'" in r.stderr


def test_user_error_is_one_line_and_exit_2(tmp_path):
    # --workers 0: the same check of the space, without starting worker processes
    r = _atml("search", "--space", "missing.yaml", "--workers", "0",
              "--storage", f"sqlite:///{tmp_path / 'x.db'}", cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    assert r.stderr == "atml: error: missing.yaml: no such search space file\n"


@pytest.mark.parametrize("code", [
    "import atml.cli.main",
    "from atml.cli.main import build_parser; build_parser()",  # what `atml --help` does
])
def test_cli_import_is_light(code):
    r = subprocess.run([sys.executable, "-c", f"{code}; import sys; print([m for m in {HEAVY!r} if m in sys.modules])"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_python_dash_m_atml_is_the_same_cli():
    r = subprocess.run([sys.executable, "-m", "atml", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == _atml("--help").stdout


def test_defaults_come_from_the_environment(monkeypatch):
    from atml.cli.main import build_parser

    for k, v in {"STORAGE": "sqlite:///e.db", "WORKERS": "3", "THREADS": "2", "ARTIFACTS": "/a",
                 "ARTIFACT_STORE": "/s", "DASHBOARD_HOST": "0.0.0.0", "DASHBOARD_PORT": "9"}.items():
        monkeypatch.setenv(f"ATML_{k}", v)
    ap = build_parser()
    s = ap.parse_args(["search", "--space", "x.yaml"])
    assert (s.storage, s.workers, s.threads, s.artifacts, s.artifact_store) == ("sqlite:///e.db", 3, 2, "/a", "/s")
    d = ap.parse_args(["dashboard"])
    assert (d.storage, d.host, d.port, d.artifacts) == ("sqlite:///e.db", "0.0.0.0", 9, "/a")
    g = ap.parse_args(["gate", "sync", "--study", "s"])
    assert (g.artifacts, g.artifact_store) == ("/a", "/s")


def test_relative_default_storage_names_the_folder_it_looked_in(tmp_path):
    r = subprocess.run([ATML, "studies"], capture_output=True, text=True, cwd=tmp_path,
                       env={k: v for k, v in os.environ.items() if k != "ATML_STORAGE"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(tmp_path / "studies" / "atml.db") in lines[0]
    assert "--storage" in lines[0] and "ATML_STORAGE" in lines[0]
    assert not (tmp_path / "studies").exists()  # nothing written


def test_storage_proxy_is_private_by_default(tmp_path):
    r = subprocess.run([ATML, "storage-proxy", "--storage", f"sqlite:///{tmp_path / 'a.db'}", "--host", "0.0.0.0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--trusted-network" in r.stderr
    assert not (tmp_path / "a.db").exists()
    h = subprocess.run([ATML, "storage-proxy", "--help"], capture_output=True, text=True).stdout
    assert "127.0.0.1" in h and "no authentication" in " ".join(h.split())
