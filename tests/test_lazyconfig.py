"""The LazyConfig path: a DistillationDetector instantiated from a LazyConfig is the yaml one
(same modules, same losses), and tools/lazyconfig_train_net.py trains, refreshes prototypes,
resumes exactly and exports a stock LazyConfig student."""
import os
import shutil

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model
from omegaconf import OmegaConf
from helpers import ROOT, calibrate_batchnorm, fill_prototypes_from_batch, make_batch, train_losses

from gkd_d2.config import load_config
from gkd_d2.lazy import build_detector, distill_view
from gkd_d2.teacher import build_teacher_cfg

YAML = os.path.join(ROOT, "configs/Demo/gkd_faster_rcnn_R34_to_R18_FPN.yaml")
LAZY = os.path.join(ROOT, "configs/LazyConfig/Demo/gkd_faster_rcnn_R34_to_R18_FPN.py")
COCO = os.path.join(ROOT, "configs/LazyConfig/COCO/gkd_mask_rcnn_R101_400ep_LSJ_to_R50_100ep_LSJ.py")


@pytest.fixture(scope="module")
def demo_teacher(tmp_path_factory):
    """Weights of the demo teacher (configs/Demo/teacher_faster_rcnn_R34_FPN.yaml), random but
    with BatchNorm statistics of images."""
    tmp = tmp_path_factory.mktemp("demo_teacher")
    torch.manual_seed(0)
    teacher = build_model(build_teacher_cfg(load_config(YAML)))
    calibrate_batchnorm(teacher, steps=5)
    DetectionCheckpointer(teacher, save_dir=str(tmp)).save("teacher")
    return str(tmp / "teacher.pth")


def lazy_config(*overrides):
    return LazyConfig.apply_overrides(LazyConfig.load(LAZY), list(overrides))


@pytest.mark.slow
def test_lazy_model_is_the_yaml_model_and_gives_the_same_losses(demo_teacher):
    cfg = load_config(YAML, ["MODEL.WEIGHTS", "", "DISTILL.TEACHER.WEIGHTS", demo_teacher])
    torch.manual_seed(0)
    yaml_model = build_model(cfg)
    batch = make_batch(((3, 0), (2, 2)), size=160)
    fill_prototypes_from_batch(yaml_model, batch)
    torch.manual_seed(1)  # another initialisation: everything must come from the state below
    lazy_model = instantiate(lazy_config(f"model.teacher_weights={demo_teacher}").model)
    assert type(lazy_model) is type(yaml_model)
    assert str(lazy_model.student) == str(yaml_model.student)
    assert lazy_model.knowledge.keys() == yaml_model.knowledge.keys()
    assert lazy_model.instance_levels == yaml_model.instance_levels
    assert lazy_model.feature_levels == yaml_model.feature_levels
    assert lazy_model.student_family.instance_level_rule == yaml_model.student_family.instance_level_rule
    assert lazy_model.attenuated_terms == yaml_model.attenuated_terms and lazy_model.max_iter == 300
    trainable = {n for n, p in yaml_model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in lazy_model.named_parameters() if p.requires_grad}
    lazy_model.load_state_dict(yaml_model.state_dict(), strict=True)  # student, adapters, prototypes
    for t_lazy, t_yaml in zip(lazy_model.teacher.state_dict().values(), yaml_model.teacher.state_dict().values()):
        assert torch.equal(t_lazy, t_yaml)  # both teachers from the same file
    losses = {}
    for name, model in (("yaml", yaml_model), ("lazy", lazy_model)):
        torch.manual_seed(5)  # RPN / RoI sampling
        losses[name] = {k: v.item() for k, v in train_losses(model, batch, it=10).items()}
    assert set(losses["yaml"]) >= {"loss_cls", "loss_kd_feature", "loss_kd_response", "loss_kd_global"}
    assert losses["lazy"] == losses["yaml"]
    assert losses["yaml"]["loss_kd_global"] > 0


@pytest.mark.slow
def test_distill_options_reach_the_model_and_the_hooks(demo_teacher):
    lazy = lazy_config(
        f"model.teacher_weights={demo_teacher}",
        "distill.PGM.NUM_PROTOTYPES=4",
        "distill.KNOWLEDGE=[feature]",
        "distill.INSTANCE_LEVELS=detectron2",
        "train.max_iter=40",
    )
    view = distill_view(lazy)
    assert view.DISTILL.PGM.NUM_PROTOTYPES == 4 and view.DISTILL.PGM.MAX_SAMPLES == 200
    assert view.DATASETS.TRAIN == ("gkd_synth_train",) and view.DATASETS.TEST == ("gkd_synth_val",)
    assert (view.INPUT.MIN_SIZE_TEST, view.INPUT.MAX_SIZE_TEST, view.SOLVER.IMS_PER_BATCH) == (160, 160, 4)
    assert view.DATASETS.SYNTHETIC.NUM_TRAIN == 2000 and view.SOLVER.MAX_ITER == 40
    model = instantiate(lazy.model)
    assert list(model.knowledge) == ["feature"] and model.prototypes.valid.shape[-1] == 4
    assert model.student_family.instance_level_rule == "detectron2" and model.max_iter == 40
    with pytest.raises(KeyError, match="PGM.NUM_PROTOTYPE"):
        distill_view(lazy_config("distill.PGM.NUM_PROTOTYPE=4"))
    with pytest.raises(ValueError, match="NUM_PROTOTYPES"):
        instantiate(lazy_config(f"model.teacher_weights={demo_teacher}", "distill.PGM.NUM_PROTOTYPES=0").model)
    with pytest.raises(FileNotFoundError, match="model.teacher_weights|no such file"):
        instantiate(lazy_config("model.teacher_weights=/nonexistent.pth").model)


def test_coco_new_baseline_pair_config():
    lazy = LazyConfig.load(COCO)
    assert lazy.model.teacher_weights.endswith("mask_rcnn_R_101_FPN_400ep_LSJ/42073830/model_final_f96b26.pkl")
    assert lazy.train.init_checkpoint.endswith("mask_rcnn_R_50_FPN_100ep_LSJ/42047764/model_final_bb69de.pkl")
    assert lazy.model.student.backbone.bottom_up.stages.depth == 50
    view = distill_view(lazy)
    assert view.DATASETS.TRAIN == ("coco_2017_train",) and view.SOLVER.IMS_PER_BATCH == 64
    assert view.DISTILL.PGM.SAMPLING == "compact"
    with pytest.raises(ValueError, match="exactly one"):
        build_detector()


def run_lazy(out, data, teacher, *extra, resume=False):
    """tools/lazyconfig_train_net.py, in this process, on 8 generated images."""
    import lazyconfig_train_net

    argv = ["--config-file", LAZY] + (["--resume"] if resume else [])
    argv += [
        f"model.teacher_weights={teacher}",
        "train.init_checkpoint=",
        f"train.output_dir={out}",
        "train.max_iter=4",
        "train.log_period=1",
        "train.checkpointer.period=2",
        "lr_multiplier.scheduler.milestones=[2,3]",
        "optimizer.lr=0.0001",
        "distill.FEATURE.WEIGHT=0.0001",  # a random student: keep the steps small
        f"datasets.SYNTHETIC.ROOT={data}",
        "datasets.SYNTHETIC.NUM_TRAIN=8",
        "datasets.SYNTHETIC.NUM_VAL=4",
        "distill.PGM.PERIOD=2",
        "distill.PGM.MIN_SIZE=4",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        *extra,
    ]
    lazyconfig_train_net.invoke_main(argv)


@pytest.fixture
def own_dataset_names():
    """Unregister the datasets a test registers in this process (the lazy script registers
    the generated data in-process; other tests register the same names with other files)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    before = set(DatasetCatalog.list())
    yield
    for name in set(DatasetCatalog.list()) - before:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.mark.slow
def test_lazy_train_refresh_resume_and_export(demo_teacher, tmp_path, monkeypatch, own_dataset_names):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "tools"))
    data, full, part = tmp_path / "data", tmp_path / "full", tmp_path / "part"
    run_lazy(full, data, demo_teacher)
    final = torch.load(full / "model_final.pth", map_location="cpu", weights_only=False)
    state = final["model"]
    assert not any(k.startswith("teacher.") for k in state)  # lean checkpoint
    assert final["teacher_weights"]["weights"] == demo_teacher and len(final["teacher_weights"]["sha256"]) == 64
    assert int(state["prototypes.last_refresh_iter"]) == 2  # refreshed at 0 and 2 (PERIOD 2)
    assert bool(state["prototypes.valid"].any())
    assert (full / "config.yaml").is_file() and (full / "inference").is_dir()  # evaluated at the end

    # --resume from the checkpoint of iteration 1 continues as the uninterrupted run did
    part.mkdir()
    shutil.copy(full / "model_0000001.pth", part / "model_0000001.pth")
    (part / "last_checkpoint").write_text("model_0000001.pth")
    run_lazy(part, data, demo_teacher, resume=True)
    resumed = torch.load(part / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert resumed.keys() == state.keys()
    assert all(torch.equal(resumed[k], state[k]) for k in state)

    # export: a stock LazyConfig student
    import export_student

    config, weights = export_student.export(
        LAZY, str(full / "model_final.pth"), str(tmp_path / "exported"), [f"model.teacher_weights={demo_teacher}"]
    )
    exported = LazyConfig.load(config)
    assert "distill" not in exported and "gkd_d2" not in OmegaConf.to_yaml(exported.model)
    assert exported.train.init_checkpoint == weights and os.path.isabs(weights)
    student = instantiate(exported.model)
    student.eval()
    incompatible = DetectionCheckpointer(student).load(weights)
    distilled = instantiate(lazy_config(f"model.teacher_weights={demo_teacher}").model)
    DetectionCheckpointer(distilled).load(str(full / "model_final.pth"))
    distilled.eval()
    images = [{k: v for k, v in x.items() if k != "instances"} for x in make_batch(((2, 0),), size=160)]
    with torch.no_grad():
        a, b = student(images)[0]["instances"], distilled(images)[0]["instances"]
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)
    assert incompatible is not None


def test_lazy_dataset_class_count_is_checked_against_the_student():
    """The LazyConfig path checks the datasets' class counts against the built student
    before anything is written, naming the dataset, both numbers and the option."""
    from types import SimpleNamespace

    from detectron2.data import DatasetCatalog, MetadataCatalog
    from omegaconf import OmegaConf

    from gkd_d2.lazy import check_lazy_dataset_classes

    for name, classes in (("lazy_cls_three", ["a", "b", "c"]), ("lazy_cls_two", ["a", "b"])):
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(thing_classes=classes)
    student = SimpleNamespace(roi_heads=SimpleNamespace(num_classes=3))
    lazy = OmegaConf.create({"dataloader": {"train": {"dataset": {"names": "lazy_cls_three"}},
                                            "test": {"dataset": {"names": ["lazy_cls_two"]}}}})
    with pytest.raises(ValueError, match=r"'lazy_cls_two' \(dataloader.test.dataset.names\) has 2 classes "
                                         r"\['a', 'b'\], but the student and the teacher predict 3"):
        check_lazy_dataset_classes(lazy, student)
    lazy.dataloader.test.dataset.names = ["lazy_cls_three"]
    check_lazy_dataset_classes(lazy, student)  # equal counts pass
    dense = SimpleNamespace(num_classes=2)
    with pytest.raises(ValueError, match="num_classes to 3"):
        check_lazy_dataset_classes(lazy, dense)
