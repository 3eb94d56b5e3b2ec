"""Per-epoch resume checkpoints: a training run interrupted after any epoch and started again ends
with the same weights, history and metrics as an uninterrupted one (CPU), for plain, fake-quant
(QAT) and 1-bit models; a checkpoint of another run is never resumed."""
import copy
import dataclasses

import pytest
import torch

from advfine.core import quantize, train
from advfine.core.attacks.pgd import PGDAttack
from advfine.core.attacks.threat import ThreatModel
from advfine.core.train import resume_path_for, train_model

from conftest import small_cnn8_arch, train_settings

CPU = torch.device("cpu")
SETTINGS = train_settings(epochs=4, batch_size=16, lr=0.05, momentum=0.9, lr_drop_epoch=2, lr_after_drop=0.01,
                          eps_warmup_epochs=1, augment=True)
ATTACK = PGDAttack(ThreatModel("linf", 0.1), step_size=0.05, steps=2, random_start=True)


class Interrupted(Exception):
    """Stands in for a kill right after a resume checkpoint was written."""


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(3)
    return torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)


def fresh_model(kind: str, data):
    from advfine.core.models import build_model

    torch.manual_seed(0)
    model = build_model(small_cnn8_arch()).eval()
    calib = [data[0][:16]]
    if kind == "qat-int4":
        return quantize.prepare_qat(model, 4, calib)
    if kind == "qat-int1":
        return quantize.prepare_qat(model, 1, calib)
    return model


def interrupt_after(monkeypatch, n_saves: int):
    """Let ``n_saves`` resume checkpoints be written, then stop the run as a kill would."""
    calls = {"n": 0}
    real_save = train.save_resume

    def save_then_maybe_stop(path, payload):
        real_save(path, payload)
        calls["n"] += 1
        if calls["n"] == n_saves:
            raise Interrupted

    monkeypatch.setattr(train, "save_resume", save_then_maybe_stop)


def interrupted_run(monkeypatch, data, resume, n_epochs=2):
    """A plain-model run stopped after ``n_epochs`` epochs, leaving its resume checkpoint."""
    with monkeypatch.context() as patch:
        interrupt_after(patch, n_epochs)
        with pytest.raises(Interrupted):
            train_model(fresh_model("plain", data), *data, SETTINGS, ATTACK, 7, CPU, resume_path=resume)
    assert resume.exists()


def without_timings(history):
    return [{k: v for k, v in record.items() if k not in ("wall_time_s", "cpu_time_s", "restored")}
            for record in history]


@pytest.mark.parametrize("kind", ["plain", "qat-int4", "qat-int1"])
@pytest.mark.parametrize("stop_after", [1, 3])
def test_an_interrupted_run_resumes_to_the_same_result(kind, stop_after, data, tmp_path, monkeypatch):
    x, y = data
    reference = fresh_model(kind, data)
    ref_history = train_model(reference, x, y, SETTINGS, ATTACK, 7, CPU)

    model = fresh_model(kind, data)
    resume = resume_path_for(tmp_path / "model.pt")
    with monkeypatch.context() as patch:
        interrupt_after(patch, stop_after)
        with pytest.raises(Interrupted):
            train_model(model, x, y, SETTINGS, ATTACK, 7, CPU, resume_path=resume)
    assert resume.exists()
    # a new process would build the model again from the same parent: do the same here
    restarted = fresh_model(kind, data)
    history = train_model(restarted, x, y, SETTINGS, ATTACK, 7, CPU, resume_path=resume)

    assert [r.get("restored", False) for r in history] == [True] * stop_after + [False] * (4 - stop_after)
    assert without_timings(history) == without_timings(ref_history)
    ref_tensors, tensors = train.model_tensors(reference), train.model_tensors(restarted)
    assert ref_tensors.keys() == tensors.keys()
    for key in ref_tensors:
        assert torch.equal(ref_tensors[key], tensors[key]), key
    assert torch.equal(reference(x), restarted(x))


def test_a_checkpoint_of_other_settings_or_weights_is_not_resumed(data, tmp_path, monkeypatch, caplog):
    x, y = data
    resume = tmp_path / ".model.resume.pt"
    interrupted_run(monkeypatch, data, resume)

    other_settings = dataclasses.replace(SETTINGS, lr=0.02)
    history = train_model(fresh_model("plain", data), x, y, other_settings, ATTACK, 7, CPU, resume_path=resume)
    assert not any(r.get("restored") for r in history) and len(history) == 4
    assert "other settings, starting weights or device type" in caplog.text

    interrupted_run(monkeypatch, data, resume)  # a checkpoint of the original settings again
    other_weights = fresh_model("plain", data)
    with torch.no_grad():
        next(other_weights.parameters()).add_(1.0)
    history = train_model(other_weights, x, y, SETTINGS, ATTACK, 7, CPU, resume_path=resume)
    assert not any(r.get("restored") for r in history)


def test_a_checkpoint_written_on_another_device_type_is_ignored_not_fatal(data, tmp_path, monkeypatch, caplog):
    """A run resumed on the CPU from a checkpoint a GPU run wrote (same settings, same weights) starts
    over: a CUDA generator's 16-byte state cannot seed a CPU generator."""
    from advfine.core.files import load_tensor_file, save_tensor_file

    x, y = data
    resume = tmp_path / ".model.resume.pt"
    interrupted_run(monkeypatch, data, resume)
    payload = load_tensor_file(resume, train.RESUME_FORMAT, "resume checkpoint")
    cuda = torch.device("cuda")  # only its type is read: no GPU needed
    payload["fingerprint"] = train._fingerprint(fresh_model("plain", data), SETTINGS, ATTACK, 7, len(y), "fp32", cuda)
    payload["rng"]["generators"] = {k: torch.zeros(16, dtype=torch.uint8) for k in payload["rng"]["generators"]}
    save_tensor_file(resume, payload)
    reference = train_model(fresh_model("plain", data), x, y, SETTINGS, ATTACK, 7, CPU)
    history = train_model(fresh_model("plain", data), x, y, SETTINGS, ATTACK, 7, CPU, resume_path=resume)
    assert not any(r.get("restored") for r in history)
    assert without_timings(history) == without_timings(reference)
    assert "device type" in caplog.text


def test_on_cuda_only_the_training_gpu_rng_is_saved_and_restored(monkeypatch):
    """A resumed job may see fewer GPUs than the one that saved (``set_rng_state_all`` would fail), or
    another GPU: one state, the training GPU's, goes onto the GPU the job trains on now."""
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(("get", str(device))) or
                        torch.zeros(16, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", str(device))))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("all GPUs' states saved"))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("all GPUs' states restored"))
    states = train._rng_states({"order": torch.Generator()}, torch.device("cuda:3"))
    train._set_rng_states(states, {"order": torch.Generator()}, torch.device("cuda:0"))
    assert calls == [("get", "cuda:3"), ("set", "cuda:0")]
    cpu_states = train._rng_states({"order": torch.Generator()}, CPU)
    assert "cuda" not in cpu_states
    train._set_rng_states(states, {"order": torch.Generator()}, CPU)  # a CUDA state is not for a CPU run
    assert len(calls) == 2


def test_a_truncated_resume_checkpoint_is_ignored_not_fatal(data, tmp_path, monkeypatch, caplog):
    x, y = data
    resume = tmp_path / ".model.resume.pt"
    interrupted_run(monkeypatch, data, resume)
    resume.write_bytes(resume.read_bytes()[:1000])
    reference = train_model(fresh_model("plain", data), x, y, SETTINGS, ATTACK, 7, CPU)
    history = train_model(fresh_model("plain", data), x, y, SETTINGS, ATTACK, 7, CPU, resume_path=resume)
    assert without_timings(history) == without_timings(reference)
    assert "ignoring" in caplog.text and str(resume) in caplog.text


def test_the_resume_checkpoint_refuses_pickled_code(data, tmp_path):
    """Resume checkpoints load with weights_only=True like every other checkpoint."""
    import pickle

    resume = tmp_path / ".model.resume.pt"
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"format": train.RESUME_FORMAT, "payload": Payload()}, resume, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    x, y = data
    history = train_model(fresh_model("plain", data), x, y, dataclasses.replace(SETTINGS, epochs=1), None, 7, CPU,
                          resume_path=resume)
    assert len(history) == 1 and not marker.exists()


def test_stages_delete_their_resume_checkpoint_when_done(tmp_path):
    from advfine.stages import prepare_data, train_base

    from conftest import stage_settings

    over = {"data.train_subset": 64, "data.test_subset": 32, "train.epochs": 1, "train.lr_drop_epoch": None}
    data_path = tmp_path / "data.pt"
    prepare_data.run(stage_settings("prepare_data", **over), out_data=data_path)
    out = tmp_path / "node"
    train_base.run(stage_settings("train_base", **over), data=data_path, train="st", seed=0,
                   out_model=out / "model.pt", out_metrics=out / "metrics.json")
    assert (out / "model.pt").exists() and not resume_path_for(out / "model.pt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "model.pt"]


def test_model_tensors_round_trip_into_a_copy(data):
    model = fresh_model("qat-int1", data)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in clone.parameters():
            p.zero_()
    train.load_model_tensors(clone, train.model_tensors(model))
    assert torch.equal(clone(data[0]), model(data[0]))
