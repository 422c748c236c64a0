"""schemathesis (dev dependency) fuzzes `honed serve` through its OpenAPI schema: no 500s,
every response conforms to the schema. Marked slow (~1-2 minutes):
    .venv/bin/pytest tests/e2e/test_serve_schema.py -m slow -s
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.e2e.test_serve_openai import serve_process, tiny_models

from honed.serve.http.auth import append_key

SCHEMATHESIS = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")


@pytest.mark.slow
def test_schemathesis_against_openapi(tmp_path):
    if not Path(SCHEMATHESIS).exists():
        pytest.skip("schemathesis is not installed (dev dependency)")
    m = tiny_models(tmp_path)
    key = append_key(tmp_path / "keys.yaml", "fuzz", ["infer", "admin"])
    args = [
        str(m["base"]),
        f"a0={m['adapters'][0]}",
        f"sent={m['clf']}",
        "--api-keys-file",
        str(tmp_path / "keys.yaml"),
    ]
    env_limits = ["--max-batch-size", "8"]
    # A body over the server's size limit is refused with 413 before it is parsed: that is a
    # rejection too (schemathesis' default list for invalid data lacks 413).
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        "[checks.negative_data_rejection]\n"
        'expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415",'
        ' "422", "428", "429", "5xx"]\n'
    )
    with serve_process(args + env_limits, key, log=tmp_path / "server.log") as (url, _):
        proc = subprocess.run(
            [
                SCHEMATHESIS,
                "--config-file",
                str(config),
                "run",
                f"{url}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                "40",
                "-H",
                f"Authorization: Bearer {key}",
                "--exclude-checks",
                "positive_data_acceptance,missing_required_header",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
