"""A checkpoint's fingerprint follows what it computes: saving the same weights again keeps it,
changing any weight or a config field that matters changes it."""

import json
import shutil

import torch

from vococli.families.loading import earlier_fingerprint, fingerprint_checkpoint


def test_the_same_weights_saved_again_keep_the_fingerprint(tiny_ckpt, tmp_path):
    """What a resumed training run does: load, save. config.json gains `dtype` in its sub-configs."""
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_ckpt, dtype=torch.float32)
    again = tmp_path / "again"
    shutil.copytree(tiny_ckpt, again)
    model.save_pretrained(again)
    before, after = json.loads((tiny_ckpt / "config.json").read_text()), json.loads((again / "config.json").read_text())
    assert before != after  # the saved config did change ...
    assert fingerprint_checkpoint(again) == fingerprint_checkpoint(tiny_ckpt)  # ... not what it computes


def test_bookkeeping_fields_do_not_count_and_real_fields_do(tiny_ckpt, tmp_path):
    folder = tmp_path / "c"
    shutil.copytree(tiny_ckpt, folder)
    config = json.loads((folder / "config.json").read_text())
    fp = fingerprint_checkpoint(folder)
    config.update(transformers_version="9.9.9", _name_or_path="/elsewhere")
    config["text_config"]["dtype"] = "bfloat16"
    (folder / "config.json").write_text(json.dumps(config, indent=4))
    assert fingerprint_checkpoint(folder) == fp
    config["text_config"]["rope_theta"] = 1234.0
    (folder / "config.json").write_text(json.dumps(config))
    assert fingerprint_checkpoint(folder) != fp


def test_a_weight_changed_in_the_middle_of_a_large_file_changes_it(tmp_path):
    """A fine-tune that changes only middle layers must not share the original's fingerprint
    (hashing the first and last MiB would miss it)."""
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text("{}")
    w = torch.zeros(3 << 20)  # 12 MiB of weights
    save_file({"w": w}, str(tmp_path / "model.safetensors"))
    fp, old = fingerprint_checkpoint(tmp_path), earlier_fingerprint(tmp_path)
    w[len(w) // 2] = 1.0
    save_file({"w": w}, str(tmp_path / "model.safetensors"))
    assert fingerprint_checkpoint(tmp_path) != fp
    assert earlier_fingerprint(tmp_path) == old  # what the earlier fingerprint missed


def test_a_damaged_weight_file_is_one_line(tmp_path):
    import pytest

    from vococli.errors import UserError

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(UserError, match="model.safetensors: not a readable safetensors file"):
        fingerprint_checkpoint(tmp_path)
