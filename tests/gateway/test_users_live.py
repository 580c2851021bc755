"""A user added while the node runs can sign in at once: `fenji user add` makes the
running node read its config again (SIGHUP), as `fenji peer add` does.  Real node."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import requests
from _wait import until

from fenji.gateway.lab.harness import NodeProcess, fenji_cmd


def test_a_user_added_while_the_node_runs_is_let_in_without_a_restart(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "n", name="n", role="center", workers=1)
    with node:
        url = node.http_url + "/api/worklist"
        r = subprocess.run([*fenji_cmd(), "user", "add", "dr.li", "--role", "operator",
                            "--json", "--config", str(node.config)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "no restart needed" in r.stderr  # --json keeps stdout for the JSON
        token = json.loads(r.stdout)["token"]
        auth = {"Authorization": f"Bearer {token}"}
        until(lambda: requests.get(url, headers=auth, timeout=30).status_code == 200, 60,
              "the new user's token to be let in")
        assert requests.get(url, headers={"Authorization": "Bearer fj_nobody"},
                            timeout=30).status_code == 401
        reloads = [x for x in node.log_tail(200).splitlines() if "config reloaded" in x]
        assert reloads and "dr.li" in reloads[-1], reloads
