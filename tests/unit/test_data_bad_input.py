"""Training data: bad input fails with file and line, or is skipped and counted — never silently (issue 13)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from coordexp_swift.config.text_literals import QWEN3_VL_SPECIAL_LITERALS, tokenizer_added_literals
from coordexp_swift.data.coordjson import render_object
from coordexp_swift.data.records import GTObject, iter_jsonl, load_records
from coordexp_swift.tools.validate_config import main as validate_main

REPO = Path(__file__).resolve().parents[2]
PLUGIN = str(REPO / "plugins" / "coordexp.py")
BOX = ["<|coord_1|>", "<|coord_2|>", "<|coord_30|>", "<|coord_40|>"]


def record(desc: str = "red square", **extra) -> dict:
    return {"images": ["images/a.png"], "width": 64, "height": 64,
            "objects": [{"desc": desc, "bbox_2d": list(BOX)}], **extra}


@pytest.fixture
def data_dir(tmp_path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"\x89PNG placeholder")  # existence is what is checked
    return tmp_path


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((ln if isinstance(ln, bytes) else ln.encode("utf-8")) + b"\n" for ln in lines))
    return path


def load_error(path: Path, **kw) -> str:
    with pytest.raises(ValueError) as exc:
        load_records(path, stage="stage1", **kw)
    return str(exc.value)


# --- item 4: special/added-token literals in desc -------------------------------------------------------------

@pytest.mark.parametrize("literal", ["<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|image_pad|>", "<think>",
                                     "</tool_call>", "<image>", "<bbox>", "<ref-object>"])
def test_desc_with_special_token_literal_is_rejected(data_dir, literal):
    """issue 13 item 4: `"red<|im_end|>square"` (and every other special/added-token literal, and ms-swift's
    template tags) in a desc fails with file, line, objects[i].desc and the literal; the renderer refuses too."""
    path = write_lines(data_dir / "train.jsonl", [json.dumps(record()), json.dumps(record(f"red{literal}square"))])
    msg = load_error(path)
    assert msg.startswith(f"{path}:2: objects[0].desc") and repr(literal) in msg
    with pytest.raises(ValueError, match="token literal"):
        render_object(GTObject(desc=f"red{literal}square", geometry="bbox_2d", bins=(1, 2, 30, 40)))


def test_desc_literals_come_from_the_tokenizer(data_dir, tiny_model_dir):
    """issue 13 item 4: the run's tokenizer decides: every added/special token of the tiny model except the coord
    tokens is forbidden; a token added to the checkpoint (not in the Qwen list) is caught too."""
    lits = tokenizer_added_literals(tiny_model_dir)
    assert "<|im_end|>" in lits and "<|box_start|>" in lits and "<image>" in lits
    assert not any(t.startswith("<|coord_") for t in lits)
    assert QWEN3_VL_SPECIAL_LITERALS <= lits  # the tiny model carries Qwen3-VL's tokenizer
    custom = frozenset(lits | {"<extra_tok>"})
    path = write_lines(data_dir / "train.jsonl", [json.dumps(record("a <extra_tok> b"))])
    assert "'<extra_tok>'" in load_error(path, literals=custom)
    assert len(load_records(path, stage="stage1").records) == 1  # not a token of the default tokenizer


# --- item 7: lone surrogates, non-UTF-8 bytes --------------------------------------------------------------------

@pytest.mark.parametrize("raw_line,where", [
    ('{"images": ["images/a.png"], "width": 64, "height": 64, "objects": [{"desc": "red\\ud800", "bbox_2d": '
     '["<|coord_1|>", "<|coord_2|>", "<|coord_30|>", "<|coord_40|>"]}]}', "objects[0].desc"),
    ('{"images": ["images/a.png"], "width": 64, "height": 64, "objects": [], "metadata": {"k": "\\udfff"}}',
     "metadata.k"),
])
def test_lone_surrogate_is_rejected_with_its_path(data_dir, raw_line, where):
    """issue 13 item 7: a lone surrogate (in desc, or anywhere else in the record) fails naming file, line and the
    field (it used to pass validation and crash inside pyarrow naming nothing)."""
    path = write_lines(data_dir / "train.jsonl", [raw_line])
    msg = load_error(path)
    assert msg.startswith(f"{path}:1: record 0: {where} contains a lone surrogate"), msg


def test_non_utf8_jsonl_names_file_line_and_column(data_dir):
    """issue 13 item 7: a non-UTF-8 byte names file, line and column (was "'utf-8' codec can't decode byte 0xff in
    position 474")."""
    bad = json.dumps(record("caf_")).encode().replace(b"caf_", b"caf\xff")
    path = write_lines(data_dir / "train.jsonl", [json.dumps(record()), bad])
    msg = load_error(path)
    col = bad.index(b"\xff") + 1
    assert msg.startswith(f"{path}:2: not valid UTF-8: byte 0xff at column {col}"), msg


# --- item 11: duplicate keys, BOM, empty file, Unicode digits ---------------------------------------------------

def test_duplicate_jsonl_keys_rejected(data_dir):
    """issue 13 item 11: a JSONL record repeating a key (top level or inside an object) is rejected like the YAML
    loader does (json.loads silently kept the last value)."""
    dup_top = json.dumps(record())[:-1] + ', "width": 32}'
    dup_obj = json.dumps(record()).replace('"desc": "red square"', '"desc": "red", "desc": "blue"')
    for line in (dup_top, dup_obj):
        path = write_lines(data_dir / "train.jsonl", [line])
        assert "duplicate key" in load_error(path) and f"{path}:1" in load_error(path)


def test_bom_is_accepted(data_dir):
    """issue 13 item 11: a UTF-8 BOM at the start of a JSONL (Windows tools) is accepted."""
    path = data_dir / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(record()).encode() + b"\n")
    recs = list(iter_jsonl(path, stage="stage1"))
    assert [r.objects[0].desc for r in recs] == ["red square"]


def test_empty_jsonl_is_no_records(data_dir):
    """issue 13 item 11: an empty (or blank-only) JSONL fails with "no records", as training does."""
    path = write_lines(data_dir / "train.jsonl", ["", "   "])
    assert load_error(path) == f"{path}: no records"


@pytest.mark.parametrize("token", ["<|coord_١٢|>", "<|coord_１２|>", "<|coord_৭|>"])
def test_unicode_digit_coord_tokens_are_malformed(data_dir, token):
    """issue 13 item 11: a coord literal with non-ASCII digits (Arabic-Indic, full-width, Bengali) is malformed,
    not bin 12 / 7 (`\\d` matched any Unicode digit)."""
    from coordexp_swift.coord.codec import is_canonical_coord_token, parse_coord_token

    rec = record()
    rec["objects"][0]["bbox_2d"][0] = token
    path = write_lines(data_dir / "train.jsonl", [json.dumps(rec, ensure_ascii=False)])
    assert "malformed coord token" in load_error(path)
    with pytest.raises(ValueError, match="malformed"):
        parse_coord_token(token)
    assert not is_canonical_coord_token(token)
    assert is_canonical_coord_token("<|coord_12|>") and not is_canonical_coord_token("<|coord_012|>")


def test_huge_numbers_in_records(data_dir):
    """issue 13 item 11 (siblings of item 8 on the training side): a 400-digit width, a 5000-digit bin (beyond
    Python's int-string limit) and 100k nested brackets are file:line errors, never tracebacks."""
    wide = json.dumps(record()).replace('"width": 64', '"width": ' + "9" * 400)
    path = write_lines(data_dir / "train.jsonl", [wide])
    assert f"{path}:1: record 0: field 'width' must be an int in 1..1048576" in load_error(path)
    for line in ('{"width": ' + "9" * 5000 + "}", "[" * 100_000):
        path = write_lines(data_dir / "train.jsonl", [line])
        assert load_error(path).startswith(f"{path}:1: malformed JSON")


# --- item 3: missing image files: fail, or skip and count ------------------------------------------------------

def test_missing_image_fails_or_is_counted(data_dir):
    """issue 13 item 3: a record whose image file is missing fails with file, line and the path by default; with
    custom.data.on_bad_sample: skip it is left out and counted per reason (never replaced silently)."""
    gone = record()
    gone["images"] = ["images/missing.png"]
    path = write_lines(data_dir / "train.jsonl", [json.dumps(record()), json.dumps(gone), json.dumps(record())])
    msg = load_error(path)
    assert msg.startswith(f"{path}:2: record 1: image file not found: {data_dir / 'images' / 'missing.png'}")
    assert "custom.data.on_bad_sample: skip" in msg
    loaded = load_records(path, stage="stage1", on_bad_sample="skip")
    assert [r.sample_id for r in loaded.records] == [0, 2]
    assert dict(loaded.skipped) == {"missing_image": 1}
    assert loaded.skip_messages[0].startswith(f"{path}:2: record 1: image file not found")
    only_missing = write_lines(data_dir / "only.jsonl", [json.dumps(gone)])
    assert "no records (1 skipped" in load_error(only_missing, on_bad_sample="skip")


# --- item 6: dataset entries: missing / directory / hub id / #N / relative paths --------------------------------

def _run_cfg(data_entry: str, tmp_path: Path, **custom) -> Path:
    cfg = {"model": str(tmp_path / "model"), "model_type": "qwen3_vl", "template": "qwen3_vl",
           "dataset": [data_entry], "external_plugins": [PLUGIN], "ignore_args_error": True,
           "custom": {"coord_soft_ce_w1": {"enabled": True}, **custom}}
    path = tmp_path / "cfg" / "run.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("entry,expect", [
    ("nope/missing.jsonl", "file not found: {cwd}/nope/missing.jsonl (relative paths are resolved against the "
                           "working directory {cwd}"),
    ("images", "is a directory; the coordexp loader reads one JSONL file per entry"),
    ("AI-ModelScope/coco", "looks like a hub dataset id, which is not supported by the coordexp loader"),
    ("hf::someone/data", "looks like a hub dataset id"),
])
def test_data_entries_that_are_not_files(entry, expect, data_dir, monkeypatch, capsys):
    """issue 13 item 6: `validate-config --data` on a missing file, a directory or a hub id exits 2 with a clear
    message naming the config file (was a traceback)."""
    monkeypatch.chdir(data_dir)
    path = _run_cfg(entry, data_dir)
    assert validate_main([str(path), "--data"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    err = err.strip().splitlines()[-1]
    assert err.startswith(f"invalid: {path}: dataset entry {entry!r}")
    assert expect.format(cwd=os.getcwd()) in err, err


def test_subsample_and_relative_paths_use_the_strict_loader(data_dir, monkeypatch, capsys):
    """issue 13 item 6: `file.jsonl#N` and relative paths resolve like ms-swift (against the working directory,
    not the YAML's folder) in validate-config and at run time, and the run's dataset lookup (ms-swift's own
    DatasetSyntax) finds the strict coordexp loader for them."""
    from swift.dataset.dataset_syntax import DatasetSyntax

    from coordexp_swift.data.swift_loader import CoordExpDatasetLoader, register_datasets
    from coordexp_swift.tools.validate_config import validate_file

    write_lines(data_dir / "train.jsonl", [json.dumps(record())] * 3)
    monkeypatch.chdir(data_dir)
    path = _run_cfg("train.jsonl#2", data_dir)  # the YAML lives in data_dir/cfg: YAML-relative would miss it
    assert validate_main([str(path), "--data"]) == 0, capsys.readouterr().err
    ctx = validate_file(str(path))
    register_datasets(ctx)
    syntax = DatasetSyntax.parse("train.jsonl#2")
    assert syntax.dataset_sample == 2
    assert syntax.get_dataset_meta(use_hf=False).loader is CoordExpDatasetLoader
    monkeypatch.chdir(data_dir / "cfg")
    assert validate_main([str(path), "--data"]) == 2  # one rule: the working directory
    assert "file not found" in capsys.readouterr().err


def test_validate_config_data_reports_skips(data_dir, monkeypatch, capsys):
    """issue 13 item 3: under on_bad_sample: skip, validate-config --data accepts and prints the per-reason counts."""
    gone = record()
    gone["images"] = ["images/missing.png"]
    write_lines(data_dir / "train.jsonl", [json.dumps(record()), json.dumps(gone)])
    monkeypatch.chdir(data_dir)
    path = _run_cfg("train.jsonl", data_dir, data={"on_bad_sample": "skip"})
    assert validate_main([str(path), "--data"]) == 0
    assert f"{data_dir / 'train.jsonl'}: {{'missing_image': 1}}" in capsys.readouterr().out
