"""The dataset against the model: class counts checked before a run writes anything (category
ids 3, 7, 42 of a COCO json are 3 classes), and PGM warnings that tell a class absent from the
data from one whose instances are all too small, and say when K is capped."""
import logging
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from helpers import distill_cfg, make_teacher, tiny_cfg
from user_runs import coco_with_category_ids, distill_yaml, earlier_run, files_of, load_tool

from gkd_d2 import PrototypeRefresher
from gkd_d2.data.builtin import register_datasets_from_cfg
from gkd_d2.data.classes import check_dataset_classes, dataset_classes, num_classes_option

train_net = load_tool("train_net")


@pytest.fixture(scope="module")
def ids_3_7_42(tmp_path_factory):
    """(json, image folder) of a COCO dataset whose category ids are 3, 7 and 42."""
    return coco_with_category_ids(tmp_path_factory.mktemp("ids_3_7_42"), [3, 7, 42])


def coco_opts(name, dataset, split="TRAIN"):
    json_file, images = dataset
    return ["DATASETS.COCO_JSON", f"[['{name}', '{json_file}', '{images}']]", f"DATASETS.{split}", f"('{name}',)"]


def register(name, classes=None, category_ids=()):
    """A dataset of one image whose annotations have ``category_ids``; metadata
    ``thing_classes`` = ``classes`` when given."""
    if name not in DatasetCatalog.list():
        anns = [{"category_id": c, "bbox": [0, 0, 8, 8], "bbox_mode": 0} for c in category_ids]
        DatasetCatalog.register(name, lambda: [{"file_name": "x.png", "annotations": anns}])
        if classes is not None:
            MetadataCatalog.get(name).thing_classes = list(classes)
    return name


# --------------------------------------------------------------------------- the class count
@pytest.mark.slow
def test_class_count_checked_before_anything_is_written(ids_3_7_42, tmp_path):
    """NUM_CLASSES left at 10 (student and teacher) on a dataset of category ids 3, 7, 42: an
    error naming both numbers and the options, and the earlier run in OUTPUT_DIR untouched."""
    teacher = make_teacher(tmp_path, "GeneralizedRCNN", num_classes=10)
    yaml = distill_yaml(tmp_path / "gkd.yaml", teacher, 10)
    out = tmp_path / "out"
    before = earlier_run(out)
    args = train_net.parse_args(
        ["--config-file", yaml, *coco_opts("edge_ids_train", ids_3_7_42), "OUTPUT_DIR", str(out)]
    )
    with pytest.raises(ValueError) as info:
        train_net.main(args)
    msg = str(info.value)
    assert msg.startswith(
        "Dataset 'edge_ids_train' (DATASETS.TRAIN) has 3 classes ['class_3', 'class_7', 'class_42'], but the "
        "student and the teacher predict 10 (MODEL.ROI_HEADS.NUM_CLASSES=10, and the teacher's config"
    ), msg
    assert "set MODEL.ROI_HEADS.NUM_CLASSES 3" in msg and "DISTILL.TEACHER.OPTS \"['MODEL.ROI_HEADS.NUM_CLASSES', '3']\"" in msg
    assert files_of(out, before) == before
    assert sorted(os.listdir(out)) == sorted([*before, "log.txt"])  # no checkpoint, metrics or events


def test_eval_only_checks_the_test_set_before_building(ids_3_7_42, tmp_path, monkeypatch):
    cfg = tiny_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 10
    yaml = tmp_path / "student.yaml"
    yaml.write_text(cfg.dump())
    built = []
    monkeypatch.setattr(train_net.DistillTrainer, "build_model", classmethod(lambda cls, c: built.append(c)))
    args = train_net.parse_args(
        ["--config-file", str(yaml), "--eval-only", *coco_opts("edge_ids_val", ids_3_7_42, "TEST"),
         "OUTPUT_DIR", str(tmp_path / "out")]
    )
    with pytest.raises(ValueError, match=r"^Dataset 'edge_ids_val' \(DATASETS.TEST\) has 3 classes .* but the model "
                       r"predicts 10 \(MODEL.ROI_HEADS.NUM_CLASSES=10\): set MODEL.ROI_HEADS.NUM_CLASSES 3\."):
        train_net.main(args)
    assert not built


@pytest.mark.parametrize(
    "arch, option", [("GeneralizedRCNN", "MODEL.ROI_HEADS.NUM_CLASSES"), ("RetinaNet", "MODEL.RETINANET.NUM_CLASSES"),
                     ("FCOS", "MODEL.FCOS.NUM_CLASSES")],
)
def test_class_count_option_of_each_family(arch, option):
    cfg = tiny_cfg(arch)
    cfg.MODEL.META_ARCHITECTURE = arch
    assert num_classes_option(cfg) == (option, 3)
    cfg.MODEL.META_ARCHITECTURE, cfg.DISTILL.STUDENT_ARCHITECTURE = "DistillationDetector", arch
    assert num_classes_option(cfg) == (option, 3)  # the student's
    cfg.DATASETS.TRAIN = (register(f"edge_four_{arch}", ["a", "b", "c", "d"]),)
    with pytest.raises(ValueError, match=f"has 4 classes \\['a', 'b', 'c', 'd'\\], but the student and the teacher "
                                         f"predict 3 \\({option}=3"):
        check_dataset_classes(cfg)
    cfg.DATASETS.TRAIN = (register(f"edge_three_{arch}", ["a", "b", "c"]),)
    check_dataset_classes(cfg)  # equal: no error


def test_dataset_without_thing_classes_is_checked_by_its_category_ids():
    assert dataset_classes(register("edge_ids_0_2", category_ids=[0, 2, 2])) == (3, None)
    assert dataset_classes(register("edge_ids_0_5", category_ids=[0, 5])) == (6, None)
    cfg = tiny_cfg()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("edge_ids_0_2",), ("edge_ids_0_5",)
    with pytest.raises(ValueError, match=r"^Dataset 'edge_ids_0_5' \(DATASETS.TEST\) has category ids up to 5, but "
                                         r"the model predicts 3 \(MODEL.ROI_HEADS.NUM_CLASSES=3\)"):
        check_dataset_classes(cfg)
    check_dataset_classes(cfg, ["edge_ids_0_2"])  # ids 0..2 fit 3 classes


# ------------------------------------------------------------------------------ PGM warnings
class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, level):
        return [r.getMessage() for r in self.records if r.levelno == level]


def test_pgm_warnings_absent_class_small_instances_and_capped_k(ids_3_7_42, rcnn_teacher):
    """Class 2 removed from the data, class 1's boxes all 2 px: two different warnings. K=50
    capped for class 0: one line with its K (per level) and instance count, a warning at the
    first refresh and an info line at the next."""
    cfg = distill_cfg(rcnn_teacher)
    cfg.DISTILL.PGM.NUM_PROTOTYPES = 50
    cfg.merge_from_list(coco_opts("edge_pgm_ids", ids_3_7_42))
    register_datasets_from_cfg(cfg)
    dicts = []
    for d in DatasetCatalog.get("edge_pgm_ids"):
        anns = [a for a in d["annotations"] if a["category_id"] != 2]
        anns = [{**a, "bbox": [*a["bbox"][:2], 2.0, 2.0]} if a["category_id"] == 1 else a for a in anns]
        dicts.append({**d, "annotations": anns})
    n_small = sum(a["category_id"] == 1 for d in dicts for a in d["annotations"])
    n_class0 = sum(a["category_id"] == 0 and min(a["bbox"][2:]) >= 4 for d in dicts for a in d["annotations"])
    assert n_small > 0 and n_class0 > 0
    model = build_model(cfg)
    refresher = PrototypeRefresher(cfg, dataset_dicts=dicts)
    records = Records()
    log = logging.getLogger("gkd_d2.prototypes.refresh")
    log.addHandler(records)
    log.setLevel(logging.INFO)
    try:
        refresher.refresh(model, 0)
        first = records.messages(logging.WARNING)
        refresher.refresh(model, 1)
    finally:
        log.removeHandler(records)
        log.setLevel(logging.NOTSET)
    absent = [w for w in first if "class 2 " in w]
    small = [w for w in first if "class 1 " in w]
    assert absent == [
        "PGM: class 2 has no instance at all in the PGM datasets ['edge_pgm_ids'] (DISTILL.PGM.DATASETS, or "
        "DATASETS.TRAIN): 'class_42' gets no prototype (its robust weights are 1)."
    ]
    assert small == [
        f"PGM: class 1 has no instance of shorter side >= 4 px (DISTILL.PGM.MIN_SIZE, at the test-time scale): "
        f"all {n_small} of its instances are smaller; 'class_7' gets no prototype (its robust weights are 1)."
    ]
    k = model.prototypes.valid[:, 0].sum(dim=1)  # class 0's prototypes at each level
    k_text = f"{int(k.min())}" if int(k.min()) == int(k.max()) else f"{int(k.min())}-{int(k.max())}"
    capped = (
        "PGM refresh at iter {}: DISTILL.PGM.NUM_PROTOTYPES=50 is capped for 1 of 3 classes (a class gets at most "
        "its sampled instances that pass the density filter, DISTILL.PGM.QUANTILE=0.4; K per level): "
        f"class 0 'class_3' K={k_text} of {n_class0} instances."
    )
    assert int(k.max()) <= n_class0 < 50
    assert [w for w in first if "capped" in w] == [capped.format(0)]
    assert capped.format(1) in records.messages(logging.INFO)
    assert not [w for w in records.messages(logging.WARNING)[len(first):] if "capped" in w]
