"""The pipeline's plan: what a build will do, checked before anything runs."""

from __future__ import annotations

import pytest

from bake.errors import ConfigError
from bake.pipeline import _check_hub_egress
from bake.settings import EgressSettings, Settings


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
