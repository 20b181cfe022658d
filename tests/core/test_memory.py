"""Memory between phases (memory.py): the allocator policy and trim, disk-backed frozen weights."""

import sys

import pytest
import torch

import r1lab.core.memory as memory
from r1lab.core.memory import DiskBackedWeights, release_free_memory, supported
from r1lab.core.models import cast_parameters, tiny_model

pytestmark = pytest.mark.skipif(not supported(), reason="disk-backed weights need Linux")


def frozen_tiny(dtype: torch.dtype = torch.float32):
    model = cast_parameters(tiny_model("llama", 512, seed=3), dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_disk_backed_weights_compute_the_same_and_release_their_pages(tmp_path, dtype):
    model = frozen_tiny(dtype)
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(0))
    before = logits(model, ids)
    weights = DiskBackedWeights(model, tmp_path)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied, one copy
    assert weights.nbytes >= sum(p.numel() * p.element_size() for p in model.parameters())
    assert weights.release()
    assert weights.resident_bytes() == 0
    assert torch.equal(logits(model, ids), before)  # paged back in from the file
    assert weights.resident_bytes() > 0
    assert weights.release() and weights.resident_bytes() == 0
    assert torch.equal(logits(model, ids), before)
    assert list(tmp_path.iterdir()) == []  # unlinked once mapped: nothing left behind


def test_writes_to_disk_backed_weights_survive_a_release(tmp_path):
    model, other = frozen_tiny(), cast_parameters(tiny_model("llama", 512, seed=4), torch.float32)
    weights = DiskBackedWeights(model, tmp_path)
    model.load_state_dict(other.state_dict())  # a reference reset writes through the mapping
    weights.release()
    for name, value in other.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_disk_backed_weights_refuse_a_trainable_or_non_cpu_module(tmp_path):
    with pytest.raises(ValueError, match="frozen"):
        DiskBackedWeights(tiny_model("llama", 512), tmp_path)
    with pytest.raises(ValueError, match="CPU"):
        DiskBackedWeights(frozen_tiny().to("meta"), tmp_path)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_free_memory_trims_the_allocator():
    garbage = [torch.ones(4096) for _ in range(256)]  # small blocks the allocator keeps
    del garbage
    assert release_free_memory() is True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_phase_boundaries_release_memory_only_under_the_release_policy(monkeypatch):
    trims = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: trims.append(1) or True)
    assert memory.configure_allocator(release=True) is True
    memory.between_phases()
    assert len(trims) == 1
    assert memory.configure_allocator(release=False) is True
    memory.between_phases()
    assert len(trims) == 1  # kept for the next phase to reuse
