"""Suite-wide settings: no hub access, no user config, a throwaway HOME for every test."""

import os

import pytest
import torch  # does not import triton: the interpreter switch below still comes first

# Without a GPU, Triton kernels run in its interpreter; the switch must precede triton's first import,
# which any test module importing llmctl.kernels may trigger.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """The suite's models are tiny and CI has 2 shared cores: one torch thread avoids oversubscription stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LLMCTL_CONFIG", raising=False)
    monkeypatch.delenv("LLMCTL_USE_MODELSCOPE", raising=False)
    monkeypatch.delenv("LLMCTL_DEBUG", raising=False)
    from llmctl.core.sources import hub_reachable

    hub_reachable.cache_clear()
    yield
    hub_reachable.cache_clear()
