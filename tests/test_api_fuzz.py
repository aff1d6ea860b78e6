"""Property-based fuzzing of the real server from its OpenAPI schema (schemathesis): no input gets a 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import running_server


def test_fuzzed_requests_never_get_a_server_error(copy_of_demo_home):
    schemathesis = Path(sys.executable).parent / "schemathesis"
    with running_server(copy_of_demo_home) as server:
        result = subprocess.run(
            [str(schemathesis), "run", f"{server.url}/openapi.json", "--checks", "not_a_server_error",
             "--max-examples", "50", "--seed", "1", "--no-color"],
            capture_output=True, text=True, timeout=600,
        )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "No issues found" in result.stdout
