"""The offline self-check's plan: the job's own python, one spec per repo, run like the job."""

from __future__ import annotations

from pathlib import Path

from bake.resolve import resolve
from bake.runner import container_config, self_check_plan
from bake.settings import Settings
from bake.spec import HubRepo, load_spec
from tests.conftest import write_job
from tests.unit.helpers import fixed_base


class OneCommitHub:
    def resolve_revision(self, repo: HubRepo) -> str:
        return "a" * 40

    def list_files(self, repo: HubRepo, commit: str) -> list[str]:
        return ["config.json"]


def test_check_runs_the_jobs_python_on_every_repo_offline(tmp_path: Path) -> None:
    spec = write_job(tmp_path, '[[models]]\nrepo = "o/m"\n[[datasets]]\nrepo = "o/d"\n'
                               '[job]\ncommand = ["python", "-c", "1"]\nenv = { X = "1" }\n')
    job = resolve(load_spec(spec), Settings(), base_lookup=fixed_base, hub=OneCommitHub())
    plan = self_check_plan("sha256:" + "f" * 64, job)
    # The job's venv python (its own huggingface_hub when it has one), never the fetch client.
    assert plan.command == ("/opt/venv/bin/python", "/opt/bake/hubfetch.py", "check",
                            "/opt/bake/hub/0.json", "/opt/bake/hub/1.json")
    assert plan.env == ()  # nothing of the job's or the seller's environment
    config = container_config(plan, user="10001:10001", out_dir=None)
    assert config["network_mode"] == "none" and config["read_only"] is True
    assert config["cap_drop"] == ["ALL"] and config["volumes"] == {}
