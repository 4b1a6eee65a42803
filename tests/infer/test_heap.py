"""`retained_heap`: keeps freed heap pages between decoder calls on glibc, a no-op elsewhere."""

from __future__ import annotations

import pytest
import torch

from samft.infer import heap


class _RecordingLibc:
    """Stands in for glibc and records the allocator settings it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


def test_retained_heap_sets_then_restores_the_thresholds(monkeypatch):
    libc = _RecordingLibc()
    monkeypatch.setattr(heap, "_glibc", lambda: libc)
    with pytest.raises(RuntimeError), heap.retained_heap() as retained:
        assert retained
        assert libc.calls == [
            ("mallopt", heap.M_MMAP_THRESHOLD, 32 * 2**20),
            ("mallopt", heap.M_TRIM_THRESHOLD, heap.RETAINED_TRIM_THRESHOLD),
        ]
        raise RuntimeError("the block fails: the settings are restored all the same")
    assert libc.calls[2:] == [
        ("mallopt", heap.M_TRIM_THRESHOLD, 64 * 2**20),
        ("malloc_trim", 0),
    ]


def test_retained_heap_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    with heap.retained_heap() as retained:
        assert not retained


def test_retained_heap_on_this_c_library():
    """On glibc the real calls succeed and tensors allocate and free as usual."""
    with heap.retained_heap() as retained:
        assert retained == (heap._glibc() is not None)
        sizes = [t.numel() for t in (torch.ones(2**22) for _ in range(3))]
    assert sizes == [2**22] * 3
