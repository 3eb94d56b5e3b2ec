"""The result records: what a writer writes its reader reads back; a file that cannot be read, lacks a key,
mistypes one or has another format is refused, naming the file and the key."""
import json
from dataclasses import replace

import pytest
from record_factory import eval_record, lineage_entry, stage_record

from advfine.pipeline.records import (EVAL_FORMAT_VERSION, STAGE_FORMAT_VERSION, MetricsFileError, read_eval_record,
                                      read_stage_record, write_eval_record, write_stage_record)


def measured_record():
    """An evaluated PTQ INT8 node with every optional value present."""
    return eval_record(
        compression="ptq-int8", method="ptq", level=8, robust_acc_pgd=0.2, robust_acc_whitebox=0.15,
        attacks={"pgd": {"attacked": 90, "broken": 10, "robust_acc_after": 0.2, "wall_time_s": 1.0}},
        attack_order=["pgd"], audit={"checks": {"large_eps": 0.0}, "flags": ["large_eps"]},
        robustness_curve=[{"eps_fraction": 0, "robust_acc": 0.9}, {"eps_fraction": 1, "robust_acc": 0.1}],
        peak_rss_mb=512.0,
        int8={"clean_acc": 0.89, "fake_quant_clean_acc": 0.9, "agreement": 0.98, "robust_acc": 0.1, "attacks": {}},
        stages=[lineage_entry("train_base", adversarial=True, estimated_macs=10**15),
                lineage_entry("compress", collapsed=True, collapsed_reason="predicts class 3")])


def test_an_eval_record_round_trips_and_carries_its_format(tmp_path):
    for record in (eval_record(), measured_record(), eval_record(int8_skipped="the model diverged (nan)")):
        write_eval_record(tmp_path / "eval.json", record)
        assert read_eval_record(tmp_path / "eval.json") == record
        written = json.loads((tmp_path / "eval.json").read_text())
        assert written["format_version"] == EVAL_FORMAT_VERSION
        assert ("int8_skipped" in written) == (record.int8_skipped is not None)  # written only when set


def test_a_stage_record_round_trips_with_its_own_fields(tmp_path):
    record = stage_record("finetune", ["train_base", "finetune"],
                          details={"history": [{"epoch": 1, "loss": 0.5}], "finetune": "ad", "init": "parent"})
    write_stage_record(tmp_path / "metrics.json", record)
    back = read_stage_record(tmp_path / "metrics.json")
    assert back == record and back.trained and [s.stage for s in back.stages] == ["train_base", "finetune"]
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["format_version"] == STAGE_FORMAT_VERSION and written["init"] == "parent"  # details sit at the top
    assert not read_stage_record_of(tmp_path, stage_record("compress", ["train_base", "compress"])).trained
    with pytest.raises(ValueError, match="stage"):  # a detail may not shadow the record's own keys
        write_stage_record(tmp_path / "bad.json", replace(record, details={"stage": "x"}))


def read_stage_record_of(tmp_path, record):
    write_stage_record(tmp_path / "other.json", record)
    return read_stage_record(tmp_path / "other.json")


def edited(tmp_path, record, edit, name="eval.json"):
    """The file of ``record`` after ``edit`` changed its JSON object."""
    path = tmp_path / name
    data = record.to_json()
    edit(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("edit, key", [
    (lambda d: d.pop("robust_acc"), "'robust_acc'"),
    (lambda d: d.pop("weight_bytes"), "'weight_bytes'"),
    (lambda d: d.update(clean_acc=90.5), "'clean_acc'"),
    (lambda d: d.update(seed="0"), "'seed'"),
    (lambda d: d.update(diverged=1), "'diverged'"),
    (lambda d: d.update(level=True), "'level'"),
    (lambda d: d.update(collapsed_upstream="train_base"), "'collapsed_upstream'"),
    (lambda d: d.update(robust_acc=None), "'robust_acc'"),  # null only for a diverged model
    (lambda d: d.update(surprise=1), "'surprise'"),
    (lambda d: d["attack"].pop("norm"), "'attack.norm'"),
    (lambda d: d["provenance"].pop("git_commit"), "'provenance.git_commit'"),
    (lambda d: d["stages"][1].pop("device"), "'stages[1].device'"),
    (lambda d: d["stages"][0].update(estimated_macs="1e15"), "'stages[0].estimated_macs'"),
    (lambda d: d["stages"].append(dict(d["stages"][0])), "'train_base' twice"),
    (lambda d: d["attacks"]["pgd"].update(robust_acc_after=2.0), "'attacks.pgd.robust_acc_after'"),
    (lambda d: d["int8"].update(robust_images=1.5), "'int8.robust_images'"),
    (lambda d: d["audit"].update(flags="large_eps"), "'audit.flags'"),
    (lambda d: d["robustness_curve"].append({"eps_fraction": 2}), "'robustness_curve'"),
])
def test_a_faulty_eval_file_is_refused_naming_file_and_key(tmp_path, edit, key):
    path = edited(tmp_path, measured_record(), edit)
    with pytest.raises(MetricsFileError) as exc:
        read_eval_record(path)
    assert str(path) in str(exc.value) and key in str(exc.value)


@pytest.mark.parametrize("edit, key", [
    (lambda d: d.pop("stages"), "'stages'"),
    (lambda d: d.update(collapsed="no"), "'collapsed'"),
    (lambda d: d["stages"][0].pop("peak_rss_mb"), "'stages[0].peak_rss_mb'"),
])
def test_a_faulty_stage_file_is_refused_naming_file_and_key(tmp_path, edit, key):
    path = edited(tmp_path, stage_record("compress", ["train_base", "compress"]), edit, "metrics.json")
    with pytest.raises(MetricsFileError) as exc:
        read_stage_record(path)
    assert str(path) in str(exc.value) and key in str(exc.value)


@pytest.mark.parametrize("other", ["missing", "older", "newer", "string", "bool"])
def test_a_file_of_another_format_is_refused(tmp_path, other):
    for record, read, name, current in (
            (eval_record(), read_eval_record, "eval.json", EVAL_FORMAT_VERSION),
            (stage_record("train_base", ["train_base"]), read_stage_record, "metrics.json", STAGE_FORMAT_VERSION)):
        def set_version(data):
            if other == "missing":
                del data["format_version"]  # written before records carried a format
            else:
                data["format_version"] = {"older": current - 1, "newer": current + 1, "string": str(current),
                                          "bool": True}[other]

        path = edited(tmp_path, record, set_version, name)
        with pytest.raises(MetricsFileError, match="'format_version'") as exc:
            read(path)
        assert str(path) in str(exc.value) and "re-run" in str(exc.value)


def test_an_unreadable_or_missing_file_is_named(tmp_path):
    broken = tmp_path / "eval.json"
    broken.write_text("{half-written")
    with pytest.raises(MetricsFileError, match="not valid JSON") as exc:
        read_eval_record(broken)
    assert str(broken) in str(exc.value)
    broken.write_text("[1, 2]")
    with pytest.raises(MetricsFileError, match="JSON object"):
        read_eval_record(broken)
    with pytest.raises(FileNotFoundError, match="nope"):
        read_stage_record(tmp_path / "nope" / "metrics.json")
