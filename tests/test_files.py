"""Checkpoints and metrics files: atomic writes, safe loading, clear errors."""
import os
import pickle

import pytest
import torch

from advfine.core import files

from advfine.core.models import build_model, default_arch
from advfine.pipeline import checkpoints


def test_checkpoint_round_trip(tmp_path):
    arch = default_arch("cnn8", 1, 10, 28, [0.5], [0.5])
    model = build_model(arch)
    checkpoints.save_checkpoint(tmp_path / "m.pt", model.state_dict(), arch)
    loaded, ckpt = checkpoints.load_model(tmp_path / "m.pt")
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x)) and ckpt["quant"] is None
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary left behind


def test_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        with files.atomic_path(tmp_path / "x.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_truncated_checkpoint_names_the_file(tmp_path):
    arch = default_arch("cnn8", 1, 10, 28, [0.5], [0.5])
    checkpoints.save_checkpoint(tmp_path / "m.pt", build_model(arch).state_dict(), arch)
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(files.ArtifactError, match="m.pt"):
        checkpoints.load_checkpoint(tmp_path / "m.pt")
    with pytest.raises(files.ArtifactError, match="not found"):
        checkpoints.load_checkpoint(tmp_path / "missing.pt")


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickled_code_in_a_checkpoint_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pt", "wb") as fh:
        pickle.dump({"format": checkpoints.CHECKPOINT_FORMAT, "payload": Payload()}, fh)
    with pytest.raises(files.ArtifactError, match="evil.pt"):
        checkpoints.load_checkpoint("evil.pt")
    assert not (tmp_path / "PWNED").exists()


def test_json_errors_name_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(files.ArtifactError, match="bad.json"):
        files.read_json(tmp_path / "bad.json")


def test_a_missing_or_damaged_prepared_dataset_names_the_file(tmp_path):
    from advfine.core.data import DataError, load_prepared

    with pytest.raises(DataError, match="digits.pt not found"):
        load_prepared(tmp_path / "digits.pt")
    (tmp_path / "digits.pt").write_bytes(b"not a tensor file")
    with pytest.raises(DataError, match="digits.pt"):
        load_prepared(tmp_path / "digits.pt")


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], ids=oct)
def test_written_files_get_the_permissions_the_umask_allows(tmp_path, umask):
    old = os.umask(umask)
    try:
        assert files.current_umask() == umask
        files.write_json(tmp_path / "eval.json", {"a": 1})
        files.save_tensor_file(tmp_path / "model.pt", {"format": "x", "w": torch.zeros(2)})
        with files.atomic_path(tmp_path / "table.csv") as tmp:
            tmp.write_text("a,b\n")
        with open(tmp_path / "plain.txt", "w") as handle:  # what the shell or Python would give
            handle.write("x")
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == expected
    for name in ("eval.json", "model.pt", "table.csv"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, name
