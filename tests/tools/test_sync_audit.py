"""The sync audit finds what would stop the host for the GPU, with the line that did it, and
every method's pretraining step and the fine-tuning step are free of it (smoke size)."""

import pytest
import torch

from benchmark.config import load_config
from benchmark.registry import get_method
from benchmark.tools.perf import perf_data
from benchmark.tools.sync_audit import (
    SyncRecorder,
    audit_finetuning,
    audit_pretraining,
)

PRETRAINED = [name for name in load_config("smoke").methods if get_method(name).needs_pretraining]


@pytest.fixture(scope="module")
def perf(tmp_path_factory):
    return perf_data(load_config("smoke"), tmp_path_factory.mktemp("audit"), 32)


def test_scalar_reads_masks_and_host_copies_of_device_tensors_are_found_with_their_line():
    on_device = torch.arange(6.0)
    on_host = torch.arange(6.0)
    recorder = SyncRecorder()
    recorder.device_tensors.add([on_device])
    recorder.start()
    try:
        on_host.sum().item()  # a host tensor: no finding
        device = on_device.device  # read from a device tensor: names the GPU
        on_host.to(device, non_blocking=True)  # asynchronous: no finding
        total = (on_device * 2).sum().item()  # line A
        picked = on_device[on_device > 2]  # line B
        copied = on_device.cpu()  # line C
        made = torch.tensor([1.0, 2.0], device=device)  # line D
        made.to("cpu")  # line E: made on the device, so a copy to the host
        copied.sum().item()  # a host copy: no finding
    finally:
        recorder.stop()
    assert total == 30.0 and picked.tolist() == [3.0, 4.0, 5.0]
    found = [(f.kind, f.code.split("#")[1].strip()) for f in recorder.findings]
    assert found == [
        ("scalar read", "line A"),
        ("data-dependent shape", "line B"),
        ("device to host", "line C"),
        ("host to device", "line D"),
        ("device to host", "line E: made on the device, so a copy to the host"),
    ]
    assert all(f.where.startswith("tests/tools/test_sync_audit.py:") for f in recorder.findings)


@pytest.mark.parametrize("method", PRETRAINED)
def test_no_pretraining_step_waits_for_the_device(perf, method):
    audit = audit_pretraining(perf, method, batch_size=4)
    assert not audit.in_steps, "\n".join(map(str, audit.in_steps))
    # the once-per-epoch check of non-finite losses is seen, in its own phase
    assert any(f.where.startswith("benchmark/method.py") for f in audit.of_phase("epoch end"))


def test_the_finetuning_step_does_not_wait_for_the_device(perf):
    audit = audit_finetuning(perf)
    assert not audit.in_steps, "\n".join(map(str, audit.in_steps))


def test_an_item_inserted_in_a_step_is_caught_at_its_line(perf, monkeypatch):
    simsiam = get_method("simsiam")
    original = simsiam.pretraining_loss

    def reads_the_loss_back(self, batch):
        losses = original(self, batch)
        self.read_back = losses["loss"].item()  # the deliberate sync
        return losses

    monkeypatch.setattr(simsiam, "pretraining_loss", reads_the_loss_back)
    audit = audit_pretraining(perf, "simsiam", batch_size=4)
    inserted = [f for f in audit.in_steps if "deliberate sync" in f.code]
    assert inserted and {f.kind for f in inserted} == {"scalar read"}
    line = reads_the_loss_back.__code__.co_firstlineno + 2
    assert inserted[0].where == f"tests/tools/test_sync_audit.py:{line}"
    assert len(inserted) == len(audit.in_steps) == 2  # steps 2 and 3; step 1 is its own phase


def test_a_table_moved_to_the_device_in_every_step_is_caught_once_moved_at_fit_start_is_not(
    perf, monkeypatch
):
    """``Module.to`` moves parameters and buffers only: a plain tensor attribute stays on the
    host on CUDA, and moving it in every step is a blocking copy (supervised's label table did
    this on the H200). Moved once in ``on_fit_start``, it is a device tensor from then on."""
    simsiam = get_method("simsiam")
    original_loss, original_start = simsiam.pretraining_loss, simsiam.on_fit_start

    def moved_at_fit_start(self):
        original_start(self)
        self.device_table = torch.arange(4.0).to(self.device)

    def uses_both_tables(self, batch):
        losses = original_loss(self, batch)
        host_table = torch.arange(4.0)
        moved = host_table.to(self.device)  # the deliberate copy
        losses["loss"] = losses["loss"] + 0 * (moved.sum() + self.device_table.sum())
        return losses

    monkeypatch.setattr(simsiam, "on_fit_start", moved_at_fit_start)
    monkeypatch.setattr(simsiam, "pretraining_loss", uses_both_tables)
    audit = audit_pretraining(perf, "simsiam", batch_size=4)
    assert [(f.kind, f.code) for f in audit.in_steps] == [
        ("host to device", "moved = host_table.to(self.device)  # the deliberate copy")
    ] * 2  # steps 2 and 3
    assert any("device_table" in f.code for f in audit.of_phase("fit start"))
