"""PGM in training: instance sampling, the refresh hook's schedule, caching, resume, 2 ranks,
warnings that name a class without instances."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import launch
from detectron2.modeling import build_model
from detectron2.structures import BoxMode
from helpers import distill_cfg, pgm_warnings_without_class

from gkd_d2 import DistillTrainer, PrototypeRefresher
from gkd_d2.data.builtin import register_datasets_from_cfg
from gkd_d2.data.generated.synthetic import SYNTHETIC_CLASSES, register_synthetic_dataset
from gkd_d2.prototypes.instances import sample_instances
from gkd_d2.prototypes.refresh import PrototypeRefreshHook

NUM_IMAGES = 8


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A tiny synthetic training set (64 px images), registered once for this module."""
    root = str(tmp_path_factory.mktemp("synth"))
    name = "gkd_test_refresh_train"
    register_synthetic_dataset(name, root, num_images=NUM_IMAGES, image_size=64, seed=3)
    return name


def refresh_cfg(teacher, synth, tmp_path, **opts):
    cfg = distill_cfg(teacher)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(SYNTHETIC_CLASSES)
    cfg.DATASETS.TRAIN = (synth,)
    cfg.DATASETS.TEST = ()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.SOLVER.BASE_LR = 1e-7  # random nets: only the schedule and the plumbing are tested
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    for k, v in opts.items():
        cfg.merge_from_list([k.replace("__", "."), v])
    return cfg


@pytest.fixture(scope="module")
def synth_teacher(tmp_path_factory):
    from helpers import make_teacher

    return make_teacher(
        tmp_path_factory.mktemp("synth_teacher"), "GeneralizedRCNN", num_classes=len(SYNTHETIC_CLASSES)
    )


def test_sample_instances_respects_cap_min_size_and_seed(synth):
    dicts = DatasetCatalog.get(synth)
    kw = dict(num_classes=len(SYNTHETIC_CLASSES), max_samples=2, min_size=10, test_short_edge=128, test_max_size=128)
    recs = sample_instances(dicts, seed=0, **kw)
    classes = np.concatenate([r.classes for r in recs])
    assert np.bincount(classes, minlength=len(SYNTHETIC_CLASSES)).max() <= 2
    for r in recs:  # 64 px images resized to 128: scale 2
        short = np.minimum(r.boxes[:, 2] - r.boxes[:, 0], r.boxes[:, 3] - r.boxes[:, 1]) * 2
        assert (short >= 10).all()
        d = next(d for d in dicts if d["image_id"] == r.image_id)
        for box, j in zip(r.boxes, r.ann_index):
            x, y, w, h = d["annotations"][j]["bbox"]
            assert np.allclose(box, [x, y, x + w, y + h])
    again = sample_instances(dicts, seed=0, **kw)
    assert [r.ann_index.tolist() for r in again] == [r.ann_index.tolist() for r in recs]
    # Without a cap every eligible instance is taken.
    all_recs = sample_instances(dicts, seed=0, **{**kw, "max_samples": 10**6})
    eligible = sum(
        1
        for d in dicts
        for a in d["annotations"]
        if min(a["bbox"][2], a["bbox"][3]) * 2 >= 10
    )
    assert sum(len(r.classes) for r in all_recs) == eligible


def _dicts(images):
    """Dataset dicts of 100x100 images; ``images``: per image a list of (class, box side px)."""
    return [
        {
            "file_name": f"img{i}.png", "image_id": i, "height": 100, "width": 100,
            "annotations": [
                {"bbox": [j, j, side, side], "bbox_mode": BoxMode.XYWH_ABS, "category_id": c}
                for j, (c, side) in enumerate(anns)
            ],
        }
        for i, anns in enumerate(images)
    ]


def _counts(recs, num_classes):
    return np.bincount(np.concatenate([r.classes for r in recs]), minlength=num_classes).tolist()


def test_compact_sampling_takes_the_rare_class_first_and_reuses_its_images():
    # Class 1 (rare) lives only in images 0 and 1, which also hold 2 instances of class 0 each;
    # images 2-9 hold 3 of class 0 each. A cap of 4: class 1 takes its 2, class 0 then finds
    # its 4 in the images already chosen, so the refresh reads 2 images, not up to 6.
    images = [[(0, 20), (0, 20), (1, 20)]] * 2 + [[(0, 20)] * 3] * 8
    kw = dict(num_classes=2, max_samples=4, min_size=10, seed=0, test_short_edge=100, test_max_size=100)
    compact = sample_instances(_dicts(images), sampling="compact", **kw)
    assert [r.image_id for r in compact] == [0, 1]
    assert _counts(compact, 2) == [4, 2]
    uniform = sample_instances(_dicts(images), sampling="uniform", **kw)
    assert _counts(uniform, 2) == [4, 2]  # the same number per class either way
    # Not enough in the chosen images: whole new images, then part of the last one.
    compact = sample_instances(_dicts(images), sampling="compact", **{**kw, "max_samples": 9})
    assert _counts(compact, 2) == [9, 2]
    assert len(compact) == 4  # images 0, 1 (4 of class 0), then 5 more: two images of 3
    again = sample_instances(_dicts(images), sampling="compact", **{**kw, "max_samples": 9})
    assert [r.ann_index.tolist() for r in again] == [r.ann_index.tolist() for r in compact]
    assert [r.image_id for r in again] == [r.image_id for r in compact]


def test_compact_sampling_reads_fewer_images_with_the_same_counts():
    rng = np.random.default_rng(0)  # 300 images, 6 classes of very different frequencies
    images = [
        [(int(c), int(s)) for c, s in zip(rng.choice(6, rng.integers(1, 8), p=[.5, .2, .15, .1, .04, .01]), rng.integers(5, 40, 8))]
        for _ in range(300)
    ]
    kw = dict(num_classes=6, max_samples=30, min_size=12, seed=1, test_short_edge=100, test_max_size=100)
    uniform = sample_instances(_dicts(images), sampling="uniform", **kw)
    compact = sample_instances(_dicts(images), sampling="compact", **kw)
    assert _counts(compact, 6) == _counts(uniform, 6)
    assert len(compact) < 0.6 * len(uniform)
    for r in compact:  # only eligible instances, each once
        assert (r.boxes[:, 2] - r.boxes[:, 0] >= 12).all() and len(set(r.ann_index)) == len(r.ann_index)
    with pytest.raises(ValueError, match="DISTILL.PGM.SAMPLING='fewest'"):
        sample_instances(_dicts(images), sampling="fewest", **kw)


@pytest.mark.slow
def test_hook_schedule_cache_and_modes(synth, synth_teacher, tmp_path, monkeypatch):
    cfg = refresh_cfg(synth_teacher, synth, tmp_path, SOLVER__MAX_ITER="7", DISTILL__PGM__PERIOD="3")
    trainer = DistillTrainer(cfg)
    hook = next(h for h in trainer._hooks if isinstance(h, PrototypeRefreshHook))
    model = trainer.model
    calls, teacher_calls, student_modes = [], [], []
    inside = []
    real_refresh = hook.refresher.refresh
    real_teacher = model.teacher_features
    real_backbone = model.student.backbone.forward

    def spy_refresh(m, it):
        calls.append(it)
        inside.append(True)
        try:
            return real_refresh(m, it)
        finally:
            inside.pop()

    def spy_teacher(inputs):
        if inside:
            teacher_calls.append(len(calls))
        return real_teacher(inputs)

    def spy_backbone(x):
        if inside:
            student_modes.append(model.student.training)
        return real_backbone(x)

    monkeypatch.setattr(hook.refresher, "refresh", spy_refresh)
    monkeypatch.setattr(model, "teacher_features", spy_teacher)
    monkeypatch.setattr(model.student.backbone, "forward", spy_backbone)
    trainer.train()
    assert calls == [0, 3, 6]
    # The teacher's instance features are pooled during the first refresh only (cached after).
    assert teacher_calls and set(teacher_calls) == {1}
    # The student is in eval mode while its instance features are pooled, in every refresh.
    assert len(student_modes) >= 3 and not any(student_modes)
    assert model.student.training
    bank = model.prototypes
    assert int(bank.last_refresh_iter) == 6 and not bank.is_empty()
    assert int(bank.valid.sum(dim=2).max()) <= cfg.DISTILL.PGM.NUM_PROTOTYPES
    metrics = [json.loads(l) for l in open(os.path.join(cfg.OUTPUT_DIR, "metrics.json"))]
    kd = [m["loss_kd_global"] for m in metrics if "loss_kd_global" in m]
    assert kd and all(np.isfinite(kd))
    assert any("kd/robust_weight_mean" in m for m in metrics)


@pytest.mark.slow
def test_resume_restores_prototypes_without_early_refresh(synth, synth_teacher, tmp_path, monkeypatch):
    cfg = refresh_cfg(
        synth_teacher, synth, tmp_path, SOLVER__MAX_ITER="5", DISTILL__PGM__PERIOD="4", SOLVER__CHECKPOINT_PERIOD="3"
    )
    trainer = DistillTrainer(cfg)
    trainer.train()  # refreshes at 0 and 4; checkpoint after iteration 2 (model_0000002.pth)
    saved = torch.load(os.path.join(cfg.OUTPUT_DIR, "model_0000002.pth"), weights_only=False)["model"]
    assert int(saved["prototypes.last_refresh_iter"]) == 0
    with open(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"), "w") as f:
        f.write("model_0000002.pth")  # pretend the run stopped after iteration 2

    cfg2 = cfg.clone()
    cfg2.SOLVER.MAX_ITER = 6
    resumed = DistillTrainer(cfg2)
    hook = next(h for h in resumed._hooks if isinstance(h, PrototypeRefreshHook))
    calls = []
    real = hook.refresher.refresh
    monkeypatch.setattr(hook.refresher, "refresh", lambda m, it: calls.append(it) or real(m, it))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    assert torch.equal(resumed.model.prototypes.teacher, saved["prototypes.teacher"])
    resumed.train()
    assert calls == [4]  # not at the restart (3): the restored prototypes are from iter 0


def _two_rank_worker(cfg, synth_root, out_dir):
    from detectron2.utils import comm

    register_synthetic_dataset("gkd_test_refresh_train", synth_root, num_images=NUM_IMAGES, image_size=64, seed=3)
    torch.manual_seed(0)  # same student weights on both ranks (DDP would broadcast them)
    model = build_model(cfg)
    stats = PrototypeRefresher(cfg).refresh(model, 0)
    state = {k: v for k, v in model.prototypes.state_dict().items()}
    torch.save({"state": state, "stats": stats}, os.path.join(out_dir, f"rank{comm.get_rank()}.pth"))


@pytest.mark.slow
def test_two_processes_get_identical_prototypes(synth, synth_teacher, tmp_path):
    cfg = refresh_cfg(synth_teacher, synth, tmp_path)
    root = DatasetCatalog.get(synth)[0]["file_name"].rsplit("/images/", 1)[0]
    port = 20000 + os.getpid() % 20000
    launch(_two_rank_worker, 2, dist_url=f"tcp://127.0.0.1:{port}", args=(cfg, root, str(tmp_path)))
    r0 = torch.load(tmp_path / "rank0.pth", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pth", weights_only=False)
    assert r0["stats"]["instances"] == r1["stats"]["instances"] > 0
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    # Same as a single process doing all the work.
    torch.manual_seed(0)
    model = build_model(cfg)
    PrototypeRefresher(cfg).refresh(model, 0)
    for k, v in model.prototypes.state_dict().items():
        # float32 rounding only: extraction batches differ (images split over ranks), and features
        # reach a few hundred, so the tolerance is relative to the tensor's largest value
        ref = r0["state"][k].float()
        assert (v.float() - ref).abs().max() <= 1e-6 * max(1.0, float(ref.abs().max())), k


def test_class_without_instances_warns_and_gets_no_prototypes(synth, synth_teacher, tmp_path):
    cfg = refresh_cfg(synth_teacher, synth, tmp_path)
    missing = 2
    warnings, model = pgm_warnings_without_class(cfg, DatasetCatalog.get(synth), missing)
    assert any(f"class {missing} has no instance" in w for w in warnings), warnings
    bank = model.prototypes
    assert not bank.valid[:, missing].any() and bank.valid.any()
    # its instances get robust weight 1
    n = 4
    levels = torch.zeros(n, dtype=torch.long)
    w = bank.robust_weights(torch.randn(n, bank.teacher.shape[-1]), torch.randn(n, bank.student.shape[-1]),
                            levels, torch.full((n,), missing))
    assert torch.equal(w, torch.ones(n))


def test_pgm_warning_names_the_class_of_a_coco_json_dataset(coco_json_files, synth_teacher, tmp_path):
    _, json_file, images = coco_json_files
    cfg = distill_cfg(synth_teacher)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(SYNTHETIC_CLASSES)
    cfg.DATASETS.COCO_JSON = [["user_pgm_train", json_file, images]]
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("user_pgm_train",), ()
    register_datasets_from_cfg(cfg)
    missing = 2
    warnings, model = pgm_warnings_without_class(cfg, DatasetCatalog.get("user_pgm_train"), missing)
    name = SYNTHETIC_CLASSES[missing]
    assert any(f"class {missing} has no instance" in w and f"'{name}'" in w for w in warnings), warnings
