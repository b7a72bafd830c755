"""The comparison methods: exact values, zero where the formula says so, gradients, errors."""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from helpers import (
    TEACHER_FIXTURES,
    distill_cfg,
    fill_prototypes_from_batch,
    make_batch,
    make_teacher,
    save_plain_config,
    tiny_cfg,
    train_losses,
)

from gkd_d2 import DistillationCheckpointer
from gkd_d2.knowledge.losses import (
    angle_relations,
    bounded_regression,
    class_deltas,
    distance_relations,
    hint_loss,
    imitation_masks,
    masked_imitation_loss,
    rkd_losses,
    weighted_soft_cross_entropy,
)

RCNN_TERMS = ["chen_cls", "chen_reg", "chen_hint", "fitnet", "fgfi", "defeat", "rkd", "kd"]
RETINA_TERMS = ["chen_hint", "fitnet", "fgfi", "defeat", "rkd"]
FCOS_TERMS = ["chen_hint", "fitnet", "defeat", "rkd"]  # FGFI needs anchor boxes


def test_weighted_soft_cross_entropy_by_hand():
    zs = torch.tensor([[1.0, 0.0, -1.0]])  # 2 classes + background
    zt = torch.tensor([[0.0, 0.0, 2.0]])
    ps, pt = torch.softmax(zs[0], 0), torch.softmax(zt[0], 0)
    w = torch.tensor([1.0, 1.0, 1.5])
    expected = -float((w * pt * ps.log()).sum())
    assert weighted_soft_cross_entropy(zs, zt, w, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_bounded_regression_by_hand():
    y = torch.zeros(3, 4)
    r_s = torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 0, 0], [0.5, 0, 0, 0]])
    r_t = torch.tensor([[2.0, 0, 0, 0], [1.0, 0, 0, 0], [0.5, 0, 0, 0]])
    # RoI 0: student (1) beats teacher (4): 0. RoI 1: student 2 > teacher 1: L2 = 2.
    # RoI 2: equal errors 0.25, margin 0: 0.25 + 0 > 0.25 is false -> 0.
    assert torch.equal(bounded_regression(r_s, r_t, y, 0.0), torch.tensor([0.0, 2.0, 0.0]))
    # A margin: the student must beat the teacher by more than m to be left alone.
    assert torch.equal(bounded_regression(r_s, r_t, y, 3.5), torch.tensor([1.0, 2.0, 0.25]))


def test_class_deltas_picks_the_gt_class():
    d = torch.arange(24.0).view(2, 12)  # 3 classes
    assert torch.equal(class_deltas(d, torch.tensor([2, 0])), torch.tensor([[8.0, 9, 10, 11], [12, 13, 14, 15]]))
    agnostic = torch.randn(2, 4)
    assert torch.equal(class_deltas(agnostic, torch.tensor([2, 0])), agnostic)


def test_fgfi_mask_one_box_by_hand():
    # One 4x4 level, stride 8 (32 px image), one 16x16 anchor per cell centred on the cell.
    centers = (torch.arange(4.0) * 8 + 4)
    cy, cx = torch.meshgrid(centers, centers, indexing="ij")
    anchors = Boxes(torch.stack([cx - 8, cy - 8, cx + 8, cy + 8], dim=-1).view(-1, 4))
    gt = Boxes(torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    # Anchors of cells (0,0), (0,1), (1,0), (1,1) ([-4,-4,12,12], [4,-4,20,12], ...) overlap the
    # box by 12x12: IoU 144/368 = 0.391, the max. Cell (0,2) [12,-4,28,12]: 4x12 -> 48/464 =
    # 0.103 < 0.5 * 0.391; every other cell overlaps less.
    (mask,) = imitation_masks([gt], [anchors], [(4, 4)], 1, 0.5)
    (looser,) = imitation_masks([gt], [anchors], [(4, 4)], 1, 0.25)
    assert looser[0, 0, 2] and looser[0, 2, 0] and not looser[0, 2, 2]  # 0.103 > 0.098
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[0, :2, :2] = True
    assert torch.equal(mask, expected)
    s, t = torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4)
    s[0, :, 0, 0] = 1.0  # 2 channels x 1 = 2
    s[0, 0, 3, 3] = 5.0  # outside the mask: ignored
    assert masked_imitation_loss([s], [t], [mask.float()]).item() == pytest.approx(2 / (2 * 4))


def test_rkd_relations_by_hand():
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    d = distance_relations(x)  # distances 3, 4, 5 -> mean 4
    assert torch.allclose(d, torch.tensor([[0, 3, 4], [3, 0, 5], [4, 5, 0]]) / 4.0)
    a = angle_relations(x)
    assert a[0, 1, 2].item() == pytest.approx(0.0, abs=1e-6)  # right angle at x_0
    assert a[1, 0, 2].item() == pytest.approx(3 / 5)  # cos at x_1 between x_0 - x_1 and x_2 - x_1
    dist, angle = rkd_losses(x * 2, x)  # relations are scale invariant
    assert dist.item() == pytest.approx(0, abs=1e-6) and angle.item() == pytest.approx(0, abs=1e-6)
    assert rkd_losses(x[:1], x[:1])[0].item() == 0.0


def test_hint_loss_by_hand():
    s, t = torch.ones(1, 2, 1, 2), torch.zeros(1, 2, 1, 2)
    s[0, 0, 0, 0] = 3.0
    assert hint_loss(s, t, "l2").item() == pytest.approx((9 + 1 + 1 + 1) / 4)
    assert hint_loss(s, t, "l1").item() == pytest.approx((3 + 1 + 1 + 1) / 4)


#: losses that may be exactly 0 on a batch: Chen's bound is 0 on RoIs where the teacher is worse
MAY_BE_ZERO = {"loss_kd_chen_reg"}


@pytest.mark.parametrize(
    "arch,terms", [("GeneralizedRCNN", RCNN_TERMS), ("RetinaNet", RETINA_TERMS), ("FCOS", FCOS_TERMS)]
)
@pytest.mark.slow
def test_every_term_has_finite_loss_and_gradients_to_student_and_adapters_only(arch, terms, request):
    teacher = request.getfixturevalue(TEACHER_FIXTURES[arch])
    torch.manual_seed(0)
    model = build_model(distill_cfg(teacher, arch, knowledge=terms + ["global"]))
    fill_prototypes_from_batch(model, make_batch(((3, 0), (3, 1))))
    losses = train_losses(model, make_batch(((3, 0), (2, 1))))
    keys = {k for k in losses if k.startswith("loss_kd_")}
    for term in terms:
        assert any(k.startswith(f"loss_kd_{term}") for k in keys), term
    for name in sorted(keys):
        value = losses[name]
        assert torch.isfinite(value), name
        assert value.grad_fn is not None, f"{name} is not connected to the graph"
        if value.item() == 0:
            assert name in MAY_BE_ZERO, f"{name} is 0 on a batch with GT boxes"
            continue
        model.zero_grad(set_to_none=True)
        value.backward(retain_graph=True)
        assert all(p.grad is None for p in model.teacher.parameters()), name
        student = sum(float(p.grad.abs().sum()) for p in model.student.parameters() if p.grad is not None)
        assert student > 0, f"{name} does not reach the student"
    feature_keys = {"chen_hint": "loss_kd_chen_hint", "fitnet": "loss_kd_fitnet", "fgfi": "loss_kd_fgfi", "defeat": "loss_kd_defeat_feat"}
    for term, key in feature_keys.items():
        if term not in terms:
            continue
        model.zero_grad(set_to_none=True)
        losses[key].backward(retain_graph=True)
        grads = [p.grad for p in model.knowledge[term].parameters()]
        assert grads and all(g is not None for g in grads), term


@pytest.mark.parametrize("arch", ["GeneralizedRCNN", "RetinaNet", "FCOS"])
def test_teacher_equal_student_gives_zero_relation_and_response_terms(arch, tmp_path):
    teacher = make_teacher(tmp_path, arch, fpn_channels=16, norm="FrozenBN")
    terms = ["chen_reg", "defeat", "rkd", "kd"] if arch == "GeneralizedRCNN" else ["defeat", "rkd"]
    model = build_model(distill_cfg(teacher, arch, knowledge=terms, norm="FrozenBN"))
    DistillationCheckpointer(model).load(teacher[1])
    losses = train_losses(model, make_batch(((3, 0), (3, 1))))
    zero = ["loss_kd_defeat_resp_fg", "loss_kd_defeat_resp_bg", "loss_kd_rkd_dist", "loss_kd_rkd_angle"]
    if arch == "GeneralizedRCNN":
        zero += ["loss_kd_chen_reg", "loss_kd_kd"]
    for k in zero:
        assert losses[k].item() == pytest.approx(0.0, abs=1e-5), k
    assert losses["loss_kd_defeat_feat"].item() > 0  # random adapter


@pytest.mark.parametrize("term", ["kd", "chen_cls", "chen_reg"])
def test_roi_terms_refuse_a_retinanet_student(term, retina_teacher):
    with pytest.raises(ValueError, match=f"DISTILL.KNOWLEDGE: '{term}' does not apply to a retinanet student"):
        build_model(distill_cfg(retina_teacher, "RetinaNet", knowledge=[term]))


@pytest.mark.parametrize("term", ["kd", "chen_cls", "chen_reg", "fgfi"])
def test_roi_and_anchor_box_terms_refuse_an_fcos_student(term, fcos_teacher):
    with pytest.raises(ValueError, match=f"DISTILL.KNOWLEDGE: '{term}' does not apply to a fcos student"):
        build_model(distill_cfg(fcos_teacher, "FCOS", knowledge=[term]))


def test_bad_zoo_options_name_the_option(rcnn_teacher):
    cfg = distill_cfg(rcnn_teacher, knowledge=["fgfi"])
    cfg.DISTILL.FGFI.PSI = 1.5
    with pytest.raises(ValueError, match="DISTILL.FGFI.PSI=1.5"):
        build_model(cfg)
    cfg = distill_cfg(rcnn_teacher, knowledge=["chen_hint"])
    cfg.DISTILL.CHEN.HINT_LOSS = "l3"
    with pytest.raises(ValueError, match="DISTILL.CHEN.HINT_LOSS='l3'"):
        build_model(cfg)


@pytest.mark.slow
def test_cascade_teacher_teaches_faster_rcnn_student(tmp_path):
    cfg = tiny_cfg("GeneralizedRCNN", fpn_channels=32)
    cfg.MODEL.ROI_HEADS.NAME = "CascadeROIHeads"
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    torch.manual_seed(0)
    teacher_model = build_model(cfg)
    from helpers import calibrate_batchnorm
    from detectron2.checkpoint import DetectionCheckpointer

    calibrate_batchnorm(teacher_model)
    path = save_plain_config(cfg, tmp_path / "cascade.yaml")
    DetectionCheckpointer(teacher_model, save_dir=str(tmp_path)).save("cascade")
    model = build_model(
        distill_cfg((path, str(tmp_path / "cascade.pth")), knowledge=["feature", "response", "global", "chen_reg", "kd"])
    )
    assert model.teacher_family.name == "cascade"
    fill_prototypes_from_batch(model, make_batch(((3, 0), (3, 1))))
    losses = train_losses(model, make_batch(((3, 0), (2, 1))))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # the response comes from the last cascade stage, its class-agnostic deltas re-encoded
    teacher_heads = model.teacher.roi_heads
    assert teacher_heads.box_predictor[-1].bbox_pred.out_features == 4


def test_rkd_distances_precise_with_large_offset():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 16, generator=g) + 1000.0  # > 25 rows: cdist's matrix-product path
    xd = x.double()
    ref = torch.cdist(xd, xd, compute_mode="donot_use_mm_for_euclid_dist")
    off = ~torch.eye(40, dtype=torch.bool)
    ref = ref / ref[off].mean()
    d = distance_relations(x)
    assert (d.double() - ref).abs().max() < 1e-5
    assert (d.diagonal() == 0).all()
    # uncentred, the same float32 features lose the distances (what the centring fixes)
    raw = torch.cdist(x, x)
    assert ((raw / raw[off].mean()).double() - ref)[off].abs().max() > 1e-3
