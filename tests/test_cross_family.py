"""Teacher and student of different families (Faster R-CNN, RetinaNet, FCOS) with feature and
global knowledge: instances at the student's levels, each read from the teacher level of the
same or the nearest stride (``gkd_d2/detectors/levels.py``)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ROIAlign, ShapeSpec
from detectron2.modeling import build_model
from helpers import TEACHER_FIXTURES, distill_cfg, fill_prototypes_from_batch, make_batch, train_losses
from PIL import Image

from gkd_d2 import PrototypeRefresher
from gkd_d2.detectors.levels import TeacherLevels
from gkd_d2.pooling import pool_instances

SAME = {f"p{i}": f"p{i}" for i in range(2, 8)}
#: (teacher, student, teacher level read for each student instance level)
PAIRS = [
    ("GeneralizedRCNN", "RetinaNet", {**{f: SAME[f] for f in ("p3", "p4", "p5", "p6")}, "p7": "p6"}),
    ("RetinaNet", "GeneralizedRCNN", {"p2": "p3", "p3": "p3", "p4": "p4", "p5": "p5", "p6": "p6"}),
    ("GeneralizedRCNN", "FCOS", {**{f: SAME[f] for f in ("p3", "p4", "p5", "p6")}, "p7": "p6"}),
    ("FCOS", "GeneralizedRCNN", {"p2": "p3", "p3": "p3", "p4": "p4", "p5": "p5", "p6": "p6"}),
]


def cross_model(request, teacher_arch, student_arch, **kw):
    teacher = request.getfixturevalue(TEACHER_FIXTURES[teacher_arch])
    torch.manual_seed(0)
    return build_model(distill_cfg(teacher, student_arch, knowledge=("feature", "global"), **kw))


@pytest.mark.parametrize("teacher_arch, student_arch, source", PAIRS)
def test_cross_family_pair_trains_with_feature_and_global_knowledge(
    teacher_arch, student_arch, source, request
):
    model = cross_model(request, teacher_arch, student_arch)
    assert model.teacher_levels.source == source
    assert model.instance_levels == list(source)
    assert model.feature_levels == ["p3", "p4", "p5", "p6"]  # the levels both FPNs output
    # the prototypes' teacher side is the teacher's width (32), the student side the student's (16)
    assert model.prototypes.teacher.shape[-1] == 32 and model.prototypes.student.shape[-1] == 16

    fill_prototypes_from_batch(model, make_batch(((3, 0), (3, 1))))
    losses = train_losses(model, make_batch(((2, 0), (3, 1)), seed=1))
    assert all(torch.isfinite(v) for v in losses.values()), losses
    for name in ("loss_kd_feature", "loss_kd_global"):
        assert losses[name] > 0, name
        model.zero_grad(set_to_none=True)
        losses[name].backward(retain_graph=True)
        grads = [p.grad for p in model.student.backbone.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, f"{name} does not reach the student"
        assert all(p.grad is None for p in model.teacher.parameters()), name


@pytest.mark.parametrize(
    "teacher_arch, student_arch", [("GeneralizedRCNN", "RetinaNet"), ("RetinaNet", "GeneralizedRCNN")]
)
def test_missing_teacher_level_is_its_nearest_level_resampled(teacher_arch, student_arch, request):
    """The teacher's map of a level it lacks: P7 = 2x2 average of its P6, P2 = 2x bilinear
    upsampling of its P3; the levels it has are its own maps."""
    model = cross_model(request, teacher_arch, student_arch)
    batch = make_batch(((2, 0), (1, 1)), size=256)
    with torch.no_grad():
        raw = model.teacher.backbone(model.teacher.preprocess_image(batch).tensor)
        student = model.student_features(batch)
    feats = model.teacher_features(batch)
    for f in model.instance_levels:
        assert feats[f].shape[-2:] == student[f].shape[-2:], f  # the student's grid
        if model.teacher_levels.source[f] == f:
            assert torch.equal(feats[f], raw[f]), f
    if "p7" in model.instance_levels:
        assert raw["p6"].shape[-2:] == (4, 4) and feats["p7"].shape[-2:] == (2, 2)
        assert torch.allclose(feats["p7"], F.avg_pool2d(raw["p6"], 2, 2, ceil_mode=True))
        assert model.teacher_levels.ratio["p7"] == 2
    else:
        assert raw["p3"].shape[-2:] == (32, 32) and feats["p2"].shape[-2:] == (64, 64)
        assert torch.allclose(feats["p2"], F.interpolate(raw["p3"], scale_factor=2, mode="bilinear"))
        assert model.teacher_levels.ratio["p2"] == 0.5


@pytest.mark.parametrize("teacher_stride, student_stride", [(64, 128), (8, 4)])
def test_resampled_level_samples_the_same_image_points(teacher_stride, student_stride):
    """On a map linear in image coordinates, ROIAlign at the student's stride on the resampled
    teacher map gives exactly what ROIAlign on the teacher's own level gives (the value at the
    box centre): the resampling keeps pixel centres aligned."""
    size = 1024
    t_shapes = {"t": ShapeSpec(channels=2, stride=teacher_stride)}
    s_shapes = {"s": ShapeSpec(channels=2, stride=student_stride)}
    levels = TeacherLevels(["s"], s_shapes, t_shapes, "retinanet")
    assert levels.source == {"s": "t"}
    n = size // teacher_stride
    centres = (torch.arange(n, dtype=torch.float64) + 0.5) * teacher_stride  # image coordinates
    x, y = centres[None, :].expand(n, n), centres[:, None].expand(n, n)
    linear = torch.stack([0.3 * x - 0.2 * y + 5, 0.1 * x + 0.7 * y])[None].float()  # (1, 2, n, n)
    boxes = torch.tensor([[300.0, 260.0, 700.0, 610.0], [410.0, 380.0, 620.0, 690.0]])
    expected = torch.stack(
        [0.3 * (boxes[:, 0] + boxes[:, 2]) / 2 - 0.2 * (boxes[:, 1] + boxes[:, 3]) / 2 + 5,
         0.1 * (boxes[:, 0] + boxes[:, 2]) / 2 + 0.7 * (boxes[:, 1] + boxes[:, 3]) / 2], dim=1
    )
    resampled = levels({"t": linear})["s"]
    assert resampled.shape[-1] == size // student_stride
    read = pool_instances({"s": resampled}, ["s"], {"s": student_stride}, [boxes])[0]
    own = pool_instances({"t": linear}, ["t"], {"t": teacher_stride}, [boxes])[0]
    assert torch.allclose(own, expected, atol=1e-3)
    assert torch.allclose(read, expected, atol=1e-3)


def test_prototype_refresh_reads_the_same_teacher_levels(rcnn_teacher, tmp_path):
    """Global knowledge: the prototypes' teacher features at P7 (a level a Faster R-CNN teacher
    lacks) are the instances pooled at stride 128 from the teacher's P6 averaged 2x2."""
    cfg = distill_cfg(rcnn_teacher, "RetinaNet", knowledge=("feature", "global"))
    cfg.DISTILL.PGM.MIN_SIZE = 0
    cfg.INPUT.MIN_SIZE_TEST = cfg.INPUT.MAX_SIZE_TEST = 256  # P6 4x4, P7 2x2: averaging matters
    torch.manual_seed(0)
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    dicts = []
    for i in range(3):
        path = str(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(path)
        anns = [  # XYWH_ABS
            {"bbox": [16.0 + 32 * j, 24.0 + 20 * j, 120.0 + 16 * j, 96.0 + 24 * i], "bbox_mode": 1,
             "category_id": (i + j) % 3}
            for j in range(3)
        ]
        dicts.append({"file_name": path, "image_id": i, "height": 256, "width": 256, "annotations": anns})
    PrototypeRefresher(cfg, dataset_dicts=dicts).refresh(model, 0)
    bank, p7 = model.prototypes, model.instance_levels.index("p7")
    assert bank.valid[p7].sum() > 0
    aligner = ROIAlign((7, 7), 1.0 / 128, 0, aligned=True)
    with torch.no_grad():
        for c, k in torch.nonzero(bank.valid[p7]).tolist():
            image_id, ann = bank.source[p7, c, k].tolist()
            d = dicts[image_id]
            image = torch.as_tensor(np.asarray(Image.open(d["file_name"]).convert("RGB"))[:, :, ::-1].copy())
            inputs = [{"image": image.permute(2, 0, 1), "height": 256, "width": 256}]
            p6 = model.teacher.backbone(model.teacher.preprocess_image(inputs).tensor)["p6"]
            x, y, w, h = d["annotations"][ann]["bbox"]
            roi = torch.tensor([[0.0, x, y, x + w, y + h]])
            expected = aligner(F.avg_pool2d(p6, 2, 2, ceil_mode=True), roi).mean(dim=(2, 3))[0]
            assert torch.allclose(bank.teacher[p7, c, k], expected, atol=1e-5)


def test_response_knowledge_across_families_is_refused(rcnn_teacher):
    with pytest.raises(ValueError, match="response knowledge needs a teacher of the student's kind"):
        build_model(distill_cfg(rcnn_teacher, "RetinaNet", knowledge=("feature", "response", "global")))


def test_student_level_without_teacher_level_names_the_options(retina_teacher):
    """A Faster R-CNN student pooling at P2 from a teacher whose FPN starts at P4 (stride 16,
    two octaves away) is refused; the error names the student's and the teacher's options."""
    cfg = distill_cfg(retina_teacher, "GeneralizedRCNN", knowledge=("feature", "global"))
    cfg.DISTILL.TEACHER.OPTS = [
        "MODEL.RESNETS.OUT_FEATURES", "['res4', 'res5']", "MODEL.FPN.IN_FEATURES", "['res4', 'res5']",
        "MODEL.RETINANET.IN_FEATURES", "['p4', 'p5', 'p6', 'p7']",
        "MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 24], [32, 48], [64, 96], [128, 192]]",
    ]
    message = r"within one octave of the student's instance level p2 \(stride 4\)"
    with pytest.raises(ValueError, match=message) as e:
        build_model(cfg)
    for option in ("MODEL.ROI_HEADS.IN_FEATURES", "DISTILL.TEACHER.CONFIG_FILE", "DISTILL.TEACHER.OPTS"):
        assert option in str(e.value)


def test_teacher_fpn_without_the_students_finest_level(rcnn_teacher):
    """The same rule within a family: a Faster R-CNN teacher whose FPN starts at P3 teaches a
    P2-P5 student with the full method (response knowledge included: the teacher's own box
    head answers on the student's RoIs, pooled at its own levels)."""
    cfg = distill_cfg(rcnn_teacher)
    cfg.DISTILL.TEACHER.OPTS = [
        "MODEL.FPN.IN_FEATURES", "['res3', 'res4', 'res5']",
        "MODEL.RPN.IN_FEATURES", "['p3', 'p4', 'p5', 'p6']",
        "MODEL.ROI_HEADS.IN_FEATURES", "['p3', 'p4', 'p5']",
        "MODEL.ANCHOR_GENERATOR.SIZES", "[[16], [32], [64], [128]]",
    ]
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.teacher_levels.source == {"p2": "p3", "p3": "p3", "p4": "p4", "p5": "p5", "p6": "p6"}
    assert model.feature_levels == ["p3", "p4", "p5", "p6"]
    fill_prototypes_from_batch(model, make_batch(((3, 0), (3, 1))))
    losses = train_losses(model, make_batch(((2, 0), (3, 1)), seed=1))
    for name in ("loss_kd_feature", "loss_kd_response", "loss_kd_global"):
        assert torch.isfinite(losses[name]) and losses[name] > 0, name
    cfg.DISTILL.FEATURE.IN_FEATURES = ["p2", "p3"]  # feature maps need the level in both
    with pytest.raises(ValueError, match=r"differ on DISTILL.FEATURE.IN_FEATURES=\['p2', 'p3'\]: \['p2'\]"):
        build_model(cfg)
