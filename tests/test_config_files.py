"""Finding the teacher's config file (``gkd_d2.config_files``): a file from the working
directory, else relative to the yaml that sets it, else a Detectron2 model-zoo name; errors name
the option."""
import os

import pytest
from helpers import ROOT, save_plain_config, tiny_cfg

from gkd_d2.config import load_config
from gkd_d2.config_files import resolve_config_file, yaml_setting
from gkd_d2.teacher import build_teacher_cfg

ZOO_YAML = "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml"


def test_resolution_order_and_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here.yaml").write_text("{}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "there.yaml").write_text("{}\n")
    assert resolve_config_file("here.yaml") == "here.yaml"  # from the working directory: as given
    assert resolve_config_file("here.yaml", relative_to=str(tmp_path / "sub")) == "here.yaml"
    assert resolve_config_file("there.yaml", relative_to="sub") == str(tmp_path / "sub" / "there.yaml")
    zoo = resolve_config_file(ZOO_YAML)
    assert os.path.isabs(zoo) and zoo.endswith(ZOO_YAML) and os.path.isfile(zoo)
    with pytest.raises(FileNotFoundError, match=r"DISTILL.TEACHER.CONFIG_FILE='COCO-Detection/.*' is neither"):
        resolve_config_file(ZOO_YAML, model_zoo_names=False)
    with pytest.raises(FileNotFoundError, match=r"'missing.yaml' is neither an existing file \(from the working "
                       r"directory or sub\) nor a Detectron2 model-zoo config name"):
        resolve_config_file("missing.yaml", relative_to="sub")
    with pytest.raises(ValueError, match="DISTILL.TEACHER.CONFIG_FILE is empty"):
        resolve_config_file("")


def test_yaml_setting_follows_the_precedence_of_base(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "first.yaml").write_text("DISTILL:\n  TEACHER:\n    CONFIG_FILE: first.yaml\n")
    (tmp_path / "second.yaml").write_text("DISTILL:\n  TEACHER:\n    CONFIG_FILE: second.yaml\n")
    (tmp_path / "neither.yaml").write_text("SOLVER:\n  MAX_ITER: 3\n")
    keys = ("DISTILL", "TEACHER", "CONFIG_FILE")
    (tmp_path / "child.yaml").write_text('_BASE_: ["a/first.yaml", "second.yaml"]\n')
    assert yaml_setting(str(tmp_path / "child.yaml"), keys) == ("second.yaml", str(tmp_path))  # later base
    (tmp_path / "child.yaml").write_text('_BASE_: ["second.yaml", "a/first.yaml", "neither.yaml"]\n')
    assert yaml_setting(str(tmp_path / "child.yaml"), keys) == ("first.yaml", str(tmp_path / "a"))
    (tmp_path / "own.yaml").write_text('_BASE_: "a/first.yaml"\nDISTILL:\n  TEACHER:\n    CONFIG_FILE: own.yaml\n')
    assert yaml_setting(str(tmp_path / "own.yaml"), keys) == ("own.yaml", str(tmp_path))  # the file itself
    assert yaml_setting(str(tmp_path / "neither.yaml"), keys) is None


def test_teacher_config_file_relative_to_the_yaml_that_sets_it(tmp_path, monkeypatch):
    base = os.path.join(ROOT, "configs", "Base-Distill-RCNN-FPN.yaml")
    a, b, elsewhere = tmp_path / "a", tmp_path / "b", tmp_path / "elsewhere"
    for d in (a, b, elsewhere):
        d.mkdir()
    save_plain_config(tiny_cfg(), a / "teacher.yaml")
    (a / "gkd.yaml").write_text(f'_BASE_: "{base}"\nDISTILL:\n  TEACHER:\n    CONFIG_FILE: "teacher.yaml"\n')
    # the key is set by a base in another folder: relative to that base
    (b / "child.yaml").write_text('_BASE_: "../a/gkd.yaml"\nSOLVER:\n  MAX_ITER: 7\n')
    monkeypatch.chdir(elsewhere)
    for yaml_file in (a / "gkd.yaml", b / "child.yaml"):
        cfg = load_config(str(yaml_file))
        assert cfg.DISTILL.TEACHER.CONFIG_FILE == str(a / "teacher.yaml"), yaml_file
        assert build_teacher_cfg(cfg).MODEL.RESNETS.DEPTH == 18  # the teacher config is found
    # a child that sets its own value wins, resolved against the child's folder
    save_plain_config(tiny_cfg(depth=34), b / "teacher.yaml")
    (b / "own.yaml").write_text('_BASE_: "../a/gkd.yaml"\nDISTILL:\n  TEACHER:\n    CONFIG_FILE: "teacher.yaml"\n')
    assert load_config(str(b / "own.yaml")).DISTILL.TEACHER.CONFIG_FILE == str(b / "teacher.yaml")
    # a value from the command line is the user's, relative to the working directory
    cfg = load_config(str(a / "gkd.yaml"), ["DISTILL.TEACHER.CONFIG_FILE", "other.yaml"])
    assert cfg.DISTILL.TEACHER.CONFIG_FILE == "other.yaml"
    # found from the working directory: unchanged (what the repository's configs rely on)
    monkeypatch.chdir(a)
    assert load_config(str(a / "gkd.yaml")).DISTILL.TEACHER.CONFIG_FILE == "teacher.yaml"
