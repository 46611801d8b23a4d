"""Schemathesis over the OpenAPI schema, in-process: no request may end in a server error.

Every generated case is sent twice: as generated, under all of schemathesis' default
checks (random study names: mostly the 404 paths), and aimed at a real study with the
right token (the paths that do work, writes included), where no answer may be a 5xx.
"""

from __future__ import annotations

import pytest
import schemathesis
from dash_helpers import TOKEN, make_study
from hypothesis import HealthCheck, Phase, settings

from atml.dashboard import create_app

EXAMPLES = 5


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{folder / 'studies' / 'atml.db'}"
    make_study(url, "fz", n=6, sizes=True, running=1)
    (folder / "studies" / "fz" / "gate" / "90-90").mkdir(parents=True)
    (folder / "studies" / "fz" / "gate" / "90-90" / "model.onnx").write_bytes(b"x")
    return create_app(url, artifacts=folder / "studies", token=TOKEN, refresh_seconds=0.2)


@pytest.fixture(scope="module")
def api_schema(fuzz_app):
    return schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate])
def test_no_server_errors(case):
    # As generated, under every default check: no 5xx, status codes and bodies as documented.
    case.call_and_validate()
    if "name" in (case.path_parameters or {}):
        case.path_parameters["name"] = "fz"
        if "number" in case.path_parameters and not isinstance(case.path_parameters["number"], int):
            case.path_parameters["number"] = 0
        headers = {**(case.headers or {}), "Authorization": f"Bearer {TOKEN}"}
        r = case.call(headers=headers)
        assert r.status_code < 500, f"{case.method} {case.formatted_path}: {r.status_code} {r.text[:300]}"
