"""Settings whose defaults depend on other settings."""

from __future__ import annotations

from pydantic import SecretStr

from tarea.settings import Settings


def test_one_tenant_runs_on_every_slot_and_several_keep_one_free() -> None:
    """Without API keys (one tenant) no slot is held back; with keys one is left for another
    tenant; an explicit cap wins."""
    assert Settings(concurrency=8).tenant_running_cap() == 0
    assert Settings(concurrency=8, api_keys=SecretStr("a:k1,b:k2")).tenant_running_cap() == 7
    assert Settings(concurrency=1, api_keys=SecretStr("a:k1")).tenant_running_cap() == 1
    assert Settings(concurrency=8, tenant_max_running=3).tenant_running_cap() == 3
