"""The pipeline's Hub parts: the Hub must pass the egress settings; the self-check's plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from bake.errors import ConfigError
from bake.pipeline import _check_hub_egress
from bake.resolve import resolve
from bake.runner import container_config, self_check_plan
from bake.settings import EgressSettings, Settings
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


def _egress(allow: tuple[str, ...] = (), allow_http: tuple[str, ...] = ()) -> Settings:
    return Settings(egress=EgressSettings(allow=allow, allow_http=allow_http))


@pytest.mark.parametrize(("settings", "endpoint"), [
    (Settings(), "https://huggingface.co"),  # the default allowlist has the public Hub
    (_egress(allow=("*.example.com",)), "https://hub.example.com/"),
    (_egress(allow_http=("http://172.17.0.1:8765",)), "http://172.17.0.1:8765"),
])
def test_a_hub_the_egress_settings_allow_passes(settings: Settings, endpoint: str) -> None:
    _check_hub_egress(settings, endpoint)


@pytest.mark.parametrize(("settings", "endpoint", "hint"), [
    (Settings(), "http://172.17.0.1:8765", 'egress.allow_http (as "http://172.17.0.1:8765")'),
    (_egress(allow_http=("http://172.17.0.1:8765",)), "http://172.17.0.1:9999",
     "egress.allow_http"),
    (_egress(allow=("pypi.org",)), "https://huggingface.co", 'egress.allow (as "huggingface.co")'),
    (_egress(), "https://huggingface.co", "egress.allow"),  # no network at all in setup
])
def test_a_hub_the_egress_settings_refuse_is_a_config_error(settings: Settings, endpoint: str,
                                                            hint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _check_hub_egress(settings, endpoint)
    assert caught.value.exit_code == 2 and caught.value.field == "build.hf_endpoint"
    assert endpoint in caught.value.message and hint in (caught.value.hint or "")
