"""gkd_d2.visualization and tools/visualize_prototypes.py: discrepancy of relations, galleries,
histogram, robust-weight overlay hook, the CLI end to end."""

import importlib.util
import math
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from helpers import distill_cfg, make_teacher
from PIL import Image

from gkd_d2 import DistillationCheckpointer, DistillTrainer, PrototypeRefresher
from gkd_d2.data.generated.synthetic import SYNTHETIC_CLASSES, register_synthetic_dataset
from gkd_d2.visualization.analysis import (
    bank_discrepancy,
    image_robust_weights,
    random_bases,
    relation_discrepancy,
    sampled_instance_features,
)
from gkd_d2.visualization.drawing import discrepancy_histogram, prototype_gallery
from gkd_d2.visualization.hook import RobustWeightOverlayHook

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = "gkd_test_vis_train"
NUM_IMAGES = 6
NUM_CLASSES = len(SYNTHETIC_CLASSES)


# ------------------------------------------------------------------------------ hand-made tensors
def test_discrepancy_is_zero_when_teacher_equals_student():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(12, 5, generator=g)
    classes = torch.tensor([0, 1, 2] * 4)
    bank = torch.randn(3, 2, 5, generator=g)
    valid = torch.tensor([[True, True], [True, False], [False, False]])  # class 2: no prototype
    d = relation_discrepancy(
        feats, feats.clone(), classes, bank, bank.clone(), valid, num_random_trials=3
    )
    assert d.with_prototypes.shape == (12,) and d.with_random.shape == (3, 12)
    assert torch.equal(d.has_bases, classes != 2)
    assert torch.allclose(d.with_prototypes, torch.zeros(12), atol=1e-6)
    assert torch.allclose(d.with_random, torch.zeros(3, 12), atol=1e-6)
    # random bases: as many as prototypes (2 for class 0, 1 for class 1, none for class 2)
    assert (d.random_index >= 0).sum(dim=2).tolist() == [[2, 1, 0]] * 3


def test_discrepancy_hand_computed():
    r = 1 / math.sqrt(2)
    # class 0: a = (t [1,0], s [1,0]), b = (t [1,1], s [0,1]); class 1: c, with no prototype
    feats_t = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    feats_s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    classes = torch.tensor([0, 0, 1])
    # one prototype of class 0: t [1,0], s [1,1] (not an instance of the set)
    bank_t = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])
    bank_s = torch.tensor([[[1.0, 1.0]], [[0.0, 0.0]]])
    valid = torch.tensor([[True], [False]])
    d = relation_discrepancy(
        feats_t, feats_s, classes, bank_t, bank_s, valid, num_random_trials=10, seed=1
    )
    # a: |cos([1,0],[1,0]) - cos([1,0],[1,1])| = 1 - r; b: |r - r| = 0; c: no bases
    assert torch.allclose(d.with_prototypes, torch.tensor([1 - r, 0.0, 0.0]), atol=1e-6)
    assert d.has_bases.tolist() == [True, True, False]
    # random bases: one instance of class 0 per trial. Base a: (0, |r - 0|); base b: (|r - 0|, 0).
    for trial in range(10):
        chosen = int(d.random_index[trial, 0, 0])
        assert chosen in (0, 1) and int(d.random_index[trial, 1, 0]) == -1
        expected = [0.0, r, 0.0] if chosen == 0 else [r, 0.0, 0.0]
        assert torch.allclose(d.with_random[trial], torch.tensor(expected), atol=1e-6)
    # seeded: same draws again, and some variety over trials
    again = relation_discrepancy(
        feats_t, feats_s, classes, bank_t, bank_s, valid, num_random_trials=10, seed=1
    )
    assert torch.equal(again.random_index, d.random_index)
    assert set(d.random_index[:, 0, 0].tolist()) == {0, 1}


def test_random_bases_draw_distinct_instances_of_each_class():
    g = torch.Generator().manual_seed(3)
    classes = torch.tensor([0] * 10 + [1] * 3 + [-1] * 4 + [2] * 5)[torch.randperm(22, generator=g)]
    feats_t, feats_s = torch.randn(22, 4, generator=g), torch.randn(22, 6, generator=g)
    counts = torch.tensor([4, 5, 0])
    b_t, b_s, valid, index = random_bases(
        feats_t, feats_s, classes, counts, generator=torch.Generator().manual_seed(7)
    )
    assert index.shape == (3, 5) and b_t.shape == (3, 5, 4) and b_s.shape == (3, 5, 6)
    assert valid.sum(dim=1).tolist() == [4, 3, 0]  # class 1 has only 3 instances
    for c in range(3):
        rows = index[c][valid[c]]
        assert len(set(rows.tolist())) == len(rows) and bool((classes[rows] == c).all())
    assert torch.equal(b_t[valid], feats_t[index[valid]]) and torch.equal(
        b_s[valid], feats_s[index[valid]]
    )
    assert not b_t[~valid].any()
    _, _, _, same = random_bases(
        feats_t, feats_s, classes, counts, generator=torch.Generator().manual_seed(7)
    )
    assert torch.equal(same, index)


def test_histogram_writes_png_and_returns_means(tmp_path):
    proto = np.array([0.0, 0.1, 0.2, 0.3])
    rand = np.array([0.5, 0.7, 0.9])
    out = discrepancy_histogram(proto, rand, str(tmp_path / "h" / "hist.png"))
    assert out["mean_prototypes"] == pytest.approx(0.15) and out["mean_random"] == pytest.approx(
        0.7
    )
    np.testing.assert_array_equal(out["random"], rand)
    with Image.open(out["path"]) as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 200
    empty = discrepancy_histogram([], [], str(tmp_path / "empty.png"))
    assert math.isnan(empty["mean_prototypes"]) and os.path.isfile(empty["path"])


# ------------------------------------------------------------------------------ a tiny model
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Synthetic data (6 images, 64 px), a 5-class tiny teacher, a student with prototypes."""
    tmp = tmp_path_factory.mktemp("vis")
    register_synthetic_dataset(
        DATASET, str(tmp / "data" / "train"), num_images=NUM_IMAGES, image_size=64, seed=5
    )
    teacher = make_teacher(tmp, "GeneralizedRCNN", num_classes=NUM_CLASSES, norm="GN")
    cfg = distill_cfg(teacher, norm="GN")
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.DATASETS.TRAIN = (DATASET,)
    cfg.DATASETS.TEST = ()
    cfg.OUTPUT_DIR = str(tmp / "out")
    cfg.SOLVER.BASE_LR = 1e-7  # random nets: only the plumbing is tested
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    torch.manual_seed(0)
    model = build_model(cfg)
    DistillationCheckpointer(model, save_dir=str(tmp)).save(
        "empty_prototypes"
    )  # before any refresh
    dicts = DatasetCatalog.get(DATASET)
    PrototypeRefresher(cfg, dicts).refresh(model, 0)
    assert not model.prototypes.is_empty()
    DistillationCheckpointer(model, save_dir=str(tmp)).save("with_prototypes")
    feats = sampled_instance_features(cfg, model, dicts)
    return SimpleNamespace(
        tmp=tmp,
        cfg=cfg,
        model=model,
        dicts=dicts,
        feats=feats,
        teacher=teacher,
        empty_ckpt=str(tmp / "empty_prototypes.pth"),
        ckpt=str(tmp / "with_prototypes.pth"),
    )


def test_prototype_discrepancy_is_one_minus_robust_weight(setup):
    model, feats = setup.model, setup.feats
    bank = model.prototypes
    assert model.student.training  # sampled_instance_features restored the mode
    d = bank_discrepancy(bank, feats, num_random_trials=2, seed=0)
    num_levels, n = feats.teacher.shape[:2]
    assert n > 0 and d.with_prototypes.shape == (num_levels, n) and d.with_random.shape == (2, num_levels, n)
    for l in range(num_levels):
        w = bank.robust_weights(
            feats.teacher[l], feats.student[l], torch.full((n,), l), feats.classes
        )
        assert torch.allclose(d.with_prototypes[l], 1 - w, atol=1e-6), l
        assert torch.equal(d.has_bases[l], bank.valid[l].any(dim=1)[feats.classes])
    # a prototype's own instance has the same features as when it was chosen: discrepancy 0
    src = bank.source[bank.valid]  # (P, 2)
    level_of = torch.nonzero(bank.valid)[:, 0]
    match = (feats.image_ids[None] == src[:, :1]) & (feats.ann_index[None] == src[:, 1:])
    rows = match.float().argmax(dim=1)
    assert bool(match.any(dim=1).all())
    assert torch.allclose(d.with_prototypes[level_of, rows], torch.zeros(len(rows)), atol=1e-5)
    # random bases: same number per (level, class) as prototypes, drawn from the class
    picked = d.random_index >= 0
    assert torch.equal(picked.sum(dim=3), bank.valid.sum(dim=2)[None].expand(2, -1, -1))
    cls_of_slot = torch.arange(NUM_CLASSES)[None, None, :, None].expand_as(d.random_index)
    assert torch.equal(feats.classes[d.random_index[picked]], cls_of_slot[picked])
    proto_vals, rand_vals = d.values()
    assert rand_vals.size == 2 * proto_vals.size == 2 * int(d.has_bases.sum())


def test_gallery_one_png_per_level_with_grid_size_and_stats(setup, tmp_path):
    model, feats = setup.model, setup.feats
    bank = model.prototypes
    cell, label_w, header = 40, 150, 20
    out = prototype_gallery(
        model,
        setup.dicts,
        SYNTHETIC_CLASSES,
        str(tmp_path),
        features=feats,
        cell_size=cell,
        label_width=label_w,
        header_height=header,
    )
    num_levels, c, k = bank.valid.shape
    assert sorted(os.listdir(tmp_path)) == sorted(
        f"gallery_{lv}.png" for lv in model.instance_levels
    )
    for li, level in enumerate(model.instance_levels):
        with Image.open(out["paths"][level]) as im:
            assert im.size == (label_w + k * cell, header + c * cell)
            px = np.asarray(im.convert("RGB"))
        for ci in range(c):
            for j in range(k):
                block = px[
                    header + ci * cell + 1 : header + (ci + 1) * cell - 1,
                    label_w + j * cell + 1 : label_w + (j + 1) * cell - 1,
                ]
                yellow = ((block == (255, 220, 0)).all(axis=2)).any()
                assert yellow == bool(bank.valid[li, ci, j]), (level, ci, j)  # the box of a crop
    # statistics: mean / min of Eq. 8 over the class's sampled instances at that level
    li, ci = 1, int(feats.classes[0])
    rows = feats.classes == ci
    w = bank.robust_weights(
        feats.teacher[li][rows],
        feats.student[li][rows],
        torch.full((int(rows.sum()),), li),
        feats.classes[rows],
    )
    assert float(out["mean"][li, ci]) == pytest.approx(float(w.mean()), abs=1e-6)
    assert float(out["min"][li, ci]) == pytest.approx(float(w.min()), abs=1e-6)
    assert int(out["count"][li, ci]) == int(rows.sum())
    missing = torch.bincount(feats.classes, minlength=c) == 0
    assert torch.isnan(out["mean"][:, missing]).all() and (out["count"][:, missing] == 0).all()


# ------------------------------------------------------------------------------ overlay hook
@pytest.mark.slow
def test_overlay_hook_draws_after_each_refresh_and_restores_mode(setup, tmp_path):
    cfg = setup.cfg.clone()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.SOLVER.MAX_ITER = 2
    cfg.DISTILL.PGM.PERIOD = 1
    cfg.DISTILL.KNOWLEDGE = ["global"]  # cheaper steps; the robust weights are the same
    cfg.DISTILL.VIS.OVERLAY_IMAGES = 2
    trainer = DistillTrainer(cfg)
    hook = RobustWeightOverlayHook(cfg)
    trainer.register_hooks([hook])
    trainer.train()  # refreshes before iterations 0 and 1; a student left in eval fails run_step
    assert trainer.model.student.training
    ids = [str(d["image_id"]) for d in setup.dicts[:2]]
    folder = tmp_path / "robust_weights"
    assert sorted(os.listdir(folder)) == ["iter_0000000", "iter_0000001"]
    for it in ("iter_0000000", "iter_0000001"):
        assert sorted(os.listdir(folder / it)) == sorted(f"{i}.png" for i in ids)
        with Image.open(folder / it / f"{ids[0]}.png") as im:
            assert im.format == "PNG" and min(im.size) >= 300
    trainer.iter = 5  # no refresh since the last overlay: nothing new
    hook.after_step()
    assert sorted(os.listdir(folder)) == ["iter_0000000", "iter_0000001"]

    # Direct call with an eval-mode student: it stays in eval mode; period mode; off switch.
    model = setup.model
    model.student.eval()
    try:
        items = image_robust_weights(model, setup.dicts[:2], cfg.INPUT.FORMAT, 64, 64)
        assert [it.image_id for it in items] == [d["image_id"] for d in setup.dicts[:2]]
        for it, d in zip(items, setup.dicts):
            assert len(it.weights) == len(d["annotations"]) and it.image.shape == (64, 64, 3)
            assert ((it.weights >= 0) & (it.weights <= 1)).all() and (
                it.weights[~it.has_prototypes] == 1
            ).all()
            assert np.array_equal(
                it.has_prototypes, model.prototypes.valid.any(dim=2)[it.levels, it.classes].numpy()
            )
        assert not model.student.training
        cfg.DISTILL.VIS.OVERLAY_PERIOD = 2
        cfg.OUTPUT_DIR = str(tmp_path / "periodic")
        periodic = RobustWeightOverlayHook(cfg)
        periodic.trainer = SimpleNamespace(model=model, iter=0)
        periodic.after_step()  # iteration 0: not due
        assert not os.path.exists(tmp_path / "periodic")
        periodic.trainer.iter = 1
        periodic.after_step()
        assert sorted(
            os.listdir(tmp_path / "periodic" / "robust_weights" / "iter_0000001")
        ) == sorted(f"{i}.png" for i in ids)
        assert not model.student.training
        cfg.DISTILL.VIS.OVERLAY_IMAGES = 0
        off = RobustWeightOverlayHook(cfg)
        off.trainer = SimpleNamespace(model=model, iter=3)
        off.after_step()
        assert not os.path.exists(tmp_path / "periodic" / "robust_weights" / "iter_0000003")
    finally:
        model.student.train()


# ------------------------------------------------------------------------------ CLI
def _cli():
    spec = importlib.util.spec_from_file_location(
        "visualize_prototypes", os.path.join(ROOT, "tools", "visualize_prototypes.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _config_file(setup, path, **overrides):
    cfg = setup.cfg.clone()
    for k, v in overrides.items():
        cfg.merge_from_list([k.replace("__", "."), v])
    path.write_text(cfg.dump())
    return str(path)


@pytest.mark.slow
def test_cli_end_to_end_regenerates_empty_prototypes(setup, tmp_path):
    # gkd_synth_train with the parameters of the module's data: the files are reused as they are
    config = _config_file(
        setup,
        tmp_path / "cfg.yaml",
        DATASETS__TRAIN="('gkd_synth_train',)",
        DATASETS__SYNTHETIC__ROOT=str(setup.tmp / "data"),
        DATASETS__SYNTHETIC__NUM_TRAIN=str(NUM_IMAGES),
        DATASETS__SYNTHETIC__IMAGE_SIZE="64",
        DATASETS__SYNTHETIC__SEED="5",
    )
    out = tmp_path / "vis"
    stamp = setup.tmp / "data" / "train" / "params.json"
    stamp_time = os.path.getmtime(stamp)
    proc = subprocess.run(
        [
            sys.executable,
            "tools/visualize_prototypes.py",
            "--config-file",
            config,
            "--checkpoint",
            setup.empty_ckpt,
            "--output",
            str(out),
            "--num-random-trials",
            "2",
            "--seed",
            "3",
            "--cell-size",
            "48",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "has no prototypes: regenerating them with PrototypeRefresher" in proc.stdout
    expected = {f"gallery_{lv}.png" for lv in setup.model.instance_levels} | {
        "discrepancy_histogram.png"
    }
    assert set(os.listdir(out)) == expected
    for name in expected:
        assert str(out / name) in proc.stdout
    means = re.findall(
        r"mean discrepancy with (PGM prototypes|random instances): ([\d.]+)", proc.stdout
    )
    assert [m[0] for m in means] == ["PGM prototypes", "random instances"]
    assert all(0.0 <= float(m[1]) <= 1.0 for m in means)
    assert os.path.getmtime(stamp) == stamp_time  # the data were reused, not regenerated


@pytest.mark.slow
def test_cli_uses_checkpoint_prototypes_in_process(setup, tmp_path, capsys):
    config = _config_file(setup, tmp_path / "cfg.yaml")
    res = _cli().visualize(
        config, setup.ckpt, str(tmp_path / "vis"), num_random_trials=1, seed=0, cell_size=32
    )
    assert "regenerating" not in capsys.readouterr().out
    d = bank_discrepancy(setup.model.prototypes, setup.feats, num_random_trials=1, seed=0)
    proto, rand = d.values()
    assert res["mean_prototypes"] == pytest.approx(float(proto.mean()), abs=1e-6)
    assert res["mean_random"] == pytest.approx(float(rand.mean()), abs=1e-6)


def test_cli_errors_name_the_option(setup, tmp_path, capsys):
    cli = _cli()
    config = _config_file(setup, tmp_path / "cfg.yaml")
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(SystemExit) as e:
        cli.main(
            ["--config-file", config, "--checkpoint", missing, "--output", str(tmp_path / "o")]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--checkpoint '{missing}': no such file" in err
    no_pgm = _config_file(setup, tmp_path / "no_pgm.yaml", DISTILL__PGM__ENABLED="False")
    with pytest.raises(SystemExit):
        cli.main(
            ["--config-file", no_pgm, "--checkpoint", setup.ckpt, "--output", str(tmp_path / "o")]
        )
    err = capsys.readouterr().err
    assert "--config-file" in err and "DISTILL.PGM.ENABLED is False" in err
    assert not os.path.exists(tmp_path / "o")
