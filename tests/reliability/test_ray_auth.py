"""Ray's dashboard and job API refuse callers without the cluster's token (a real `ray start --head`).

The head node is started the way the cluster launchers start one
(``RAY_AUTH_MODE=token``, ``tests/e2e/cluster_helpers.start_token_head``), in its
own processes with a private temp dir, never in the pytest process; it is the
session's shared head (the ``token_head`` fixture), which other tests may have
submitted jobs to before. Then, over
HTTP: every probed endpoint (job list and submission, version, nodes, actors,
Serve applications, cluster status) answers 401 without a token and 403 with a
wrong one, and 200 with ``Authorization: Bearer <token>``; only Ray's
documented public paths (health checks, the auth-mode probe) answer without
one. The job submission client (a subprocess holding no token) fails, and
succeeds with the token. A submission refused without the token starts no job.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import textwrap
import time

import httpx
import pytest

from tests.e2e.cluster_helpers import BIN
from tests.reliability.conftest import report_figure

pytestmark = [pytest.mark.reliability, pytest.mark.ray]

# (method, path): the dashboard endpoints that must need the token (Ray 2.60's routes).
PROTECTED = [
    ("GET", "/api/version"),
    ("GET", "/api/jobs/"),
    ("POST", "/api/jobs/"),
    ("GET", "/nodes?view=summary"),
    ("GET", "/logical/actors"),
    ("GET", "/api/v0/actors"),
    ("GET", "/api/cluster_status"),
    ("GET", "/api/serve/applications/"),
]
# Ray's own allow-list (dashboard/http_server_head.py): health checks and the probe the login page uses.
# (/api/healthz is on the allow-list too, but the head answers it 404: the node agent serves it.)
PUBLIC = ["/api/gcs_healthz", "/api/authentication_mode"]
SUBMISSION = {"entrypoint": "echo refused-submission-ran"}

CLIENT_SCRIPT = textwrap.dedent("""
    import json, sys
    from ray.job_submission import JobSubmissionClient

    url, token = sys.argv[1], sys.argv[2]
    out = {}
    for name, headers in (("no token", None), ("wrong token", {"Authorization": "Bearer not-the-token"}),
                          ("token", {"Authorization": f"Bearer {token}"})):
        try:
            client = JobSubmissionClient(url, headers=headers)
            out[name] = {"ok": True, "jobs": len(client.list_jobs())}
        except Exception as err:
            out[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:300]}
    print("RESULT " + json.dumps(out))
""")


def _request(url: str, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = SUBMISSION if method == "POST" else None
    return httpx.request(method, url + path, json=body, headers=headers, timeout=30)


def test_the_dashboard_and_job_api_need_the_token(token_head):
    started = time.perf_counter()
    url, env, token = token_head
    assert httpx.get(f"{url}/api/authentication_mode", timeout=10).json() == {"authentication_mode": "token"}

    refused: dict[str, int] = {}
    for method, path in PROTECTED:
        missing = _request(url, method, path)
        assert missing.status_code == 401, (method, path, missing.status_code, missing.text[:200])
        wrong = _request(url, method, path, {"Authorization": "Bearer " + "0" * len(token)})
        assert wrong.status_code == 403, (method, path, wrong.status_code, wrong.text[:200])
        # Ray's fallback header (for proxies) carries the token too: a wrong one is refused there as well.
        assert _request(url, method, path, {"X-Ray-Authorization": "Bearer nope"}).status_code == 403
        refused[f"{method} {path}"] = missing.status_code
    for path in PUBLIC:
        assert httpx.get(url + path, timeout=10).status_code == 200, path

    good = {"Authorization": f"Bearer {token}"}
    for method, path in PROTECTED:
        if method == "GET":
            ok = _request(url, method, path, good)
            assert ok.status_code == 200, (path, ok.status_code, ok.text[:200])
    # The refused submissions above started nothing (the shared head may list other tests' jobs).
    listed = _request(url, "GET", "/api/jobs/", good).json()
    assert [job for job in listed if job["entrypoint"] == SUBMISSION["entrypoint"]] == []

    # The job submission client: a process that holds no token (no RAY_AUTH_TOKEN, a HOME without
    # ~/.ray/auth_token) is refused; the same client sending the token is served.
    with tempfile.TemporaryDirectory(prefix="rayauth-home") as home:
        client_env = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")} | {"HOME": home}
        proc = subprocess.run([str(BIN / "python"), "-c", CLIENT_SCRIPT, url, token], env=client_env,
                              capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    client = json.loads(lines[-1].removeprefix("RESULT "))
    elapsed = time.perf_counter() - started

    # Ray's client turns the dashboard's 401 / 403 into AuthenticationError with the server's reason.
    assert client["no token"]["ok"] is False, client
    assert client["no token"]["error"].startswith("AuthenticationError: Authentication required: Unauthorized")
    assert client["wrong token"]["ok"] is False, client
    assert client["wrong token"]["error"].startswith("AuthenticationError: Authentication failed: Forbidden")
    assert client["token"] == {"ok": True, "jobs": len(listed)}, client
    report_figure(f"Ray dashboard/job API of a `ray start --head` (RAY_AUTH_MODE=token), {len(PROTECTED)} endpoints",
                  f"no token 401 and wrong token 403 on all {len(refused)} (incl. POST /api/jobs/), 200 with the "
                  f"token; public only {', '.join(PUBLIC)}; JobSubmissionClient refused without the token "
                  f"(AuthenticationError), served with it; {elapsed:.0f}s once the head was up",
                  "0 jobs started without the token")
