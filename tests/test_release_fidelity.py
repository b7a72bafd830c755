"""gkd_d2's default terms against a reference of the authors' release (``release_reference.py``),
fed the same tensors; and gkd_d2's side of each row where it departs on purpose (the table
"gkd_d2 and the release, row by row" of ``docs/method.md``)."""
import types

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

import release_reference as ref
from gkd_d2.knowledge import DistillSpec
from gkd_d2.knowledge.feature import FeatureKnowledge
from gkd_d2.knowledge.global_knowledge import GlobalKnowledge
from gkd_d2.knowledge.losses import decoupled_feature_loss, positive_response, weighted_box_mask
from gkd_d2.knowledge.response import ResponseKnowledge
from gkd_d2.meta_arch import DistillationDetector
from gkd_d2.pooling import assign_level_index
from gkd_d2.prototypes.bank import PrototypeBank
from gkd_d2.prototypes.pgm import generate_prototypes
from gkd_d2.prototypes.relations import robust_weights
from gkd_d2.structures import DenseResponse, DistillBatch, GroundTruth, RoIResponse

LEVELS, STRIDES = ["p3", "p4"], {"p3": 8, "p4": 16}


def spec(student_type, d_s=4, d_t=6):
    return DistillSpec(
        student_type=student_type,
        teacher_type=student_type,
        num_classes=3,
        student_shapes={f: ShapeSpec(channels=d_s, stride=STRIDES[f]) for f in LEVELS},
        teacher_shapes={f: ShapeSpec(channels=d_t, stride=STRIDES[f]) for f in LEVELS},
        feature_levels=LEVELS,
        instance_levels=LEVELS,
        strides=STRIDES,
        prototypes_enabled=True,
    )


def ground_truth(boxes, classes, image_index, rule="release"):
    box_lists = [Boxes(boxes[image_index == b]) for b in range(int(image_index.max()) + 1)]
    level_index = assign_level_index(box_lists, 3, 4, rule)
    return GroundTruth(boxes, classes, image_index, level_index, box_lists)


def test_instance_level_rule_is_the_releases():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(400, 2, generator=g) * 300
    wh = torch.exp(torch.rand(400, 2, generator=g) * 6)  # sides 1 .. 400 px
    boxes = torch.cat([xy, xy + wh], dim=1)
    for first, last in ((3, 7), (2, 6)):  # RetinaNet / FCOS, Faster R-CNN
        ours = assign_level_index([Boxes(boxes)], first, last, rule="release")
        theirs = torch.tensor([ref.level_of_box(b, last - first + 1) for b in boxes])
        assert torch.equal(ours, theirs)
    # by hand: sides (w + 1) 55 -> first level, 111 -> first, 112 -> second, 447 -> third
    hand = torch.tensor([[0, 0, 54, 54], [0, 0, 110, 110], [0, 0, 111, 111], [0, 0, 446, 446]]).float()
    assert assign_level_index([Boxes(hand)], 3, 7, "release").tolist() == [0, 0, 1, 2]
    # Detectron2's rule puts the same boxes one level finer on a dense head (P3-P7)
    assert assign_level_index([Boxes(hand)], 3, 7, "detectron2").tolist() == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="DISTILL.INSTANCE_LEVELS='fpn'"):
        assign_level_index([Boxes(hand)], 3, 7, "fpn")


@pytest.mark.parametrize("student_type", ["rcnn", "retinanet"])
def test_feature_term_matches_the_release(student_type):
    """Eq. 7 with robust-weighted masks, levels averaged (two-stage) or summed (dense); boxes at
    least a cell wide and not overlapping, where the two agree by construction."""
    torch.manual_seed(0)
    term = FeatureKnowledge(spec=spec(student_type), weight=1.0, gamma_fg=1.0, gamma_bg=4.0,
                            level_reduction="mean" if student_type == "rcnn" else "sum")
    boxes = torch.tensor([[3.0, 5.0, 40.0, 30.0], [44.0, 2.0, 150.0, 120.0], [10.0, 60.0, 60.0, 120.0]])
    gt = ground_truth(boxes, torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1]))
    assert gt.level_index.tolist() == [0, 1, 0]
    s = {f: torch.randn(2, 4, 128 // STRIDES[f], 160 // STRIDES[f]) for f in LEVELS}
    t = {f: torch.randn(2, 6, 128 // STRIDES[f], 160 // STRIDES[f]) for f in LEVELS}
    weights = torch.tensor([0.7, 0.4, 0.9])
    batch = DistillBatch(gt, s, t, STRIDES, weights)
    ours = term(batch)["loss_kd_feature"]
    per_level = []
    for lvl, f in enumerate(LEVELS):
        _, _, h, w = t[f].shape
        masks = torch.stack([
            ref.gt_mask(boxes[gt.image_index == b], gt.level_index[gt.image_index == b].tolist(),
                        weights[gt.image_index == b], lvl, STRIDES[f], h, w)
            for b in range(2)
        ]).float()
        per_level.append(ref.feature_level_loss(term.adapters[f](s[f]), t[f], masks, 1.0, 4.0))
    theirs = ref.feature_loss(per_level, two_stage=student_type == "rcnn")
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_response_term_matches_the_release_on_rois_and_anchors():
    torch.manual_seed(1)
    term = ResponseKnowledge(weight=1.0)  # the defaults: release form, T = 2, robust weights
    zs, zt = torch.randn(6, 4), torch.randn(6, 4)
    gt_classes = torch.tensor([0, 3, 2, 3, 1, 3])  # 3 = background (C = 3)
    weights = torch.tensor([0.5, 1.0, 0.8, 1.0, 0.3, 1.0])
    roi = RoIResponse(zs, None, gt_classes, None, None, None, None, None, None, zt, None, None, weights)
    fg = gt_classes < 3
    theirs = ref.response_loss(zs[fg], zt[fg], weights[fg], 2.0)
    assert term(types.SimpleNamespace(response=roi))["loss_kd_response"].item() == pytest.approx(theirs.item(), rel=1e-6)

    zs, zt = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    labels = torch.tensor([[0, 3, -1, 2, 3], [1, 1, 3, 3, 3]])
    w = torch.rand(2, 5)
    dense = DenseResponse(zs, labels, None, None, 1.0, zt, w)
    pos = (labels >= 0) & (labels < 3)
    theirs = ref.response_loss(zs[pos], zt[pos], w[pos], 2.0)
    assert term(types.SimpleNamespace(response=dense))["loss_kd_response"].item() == pytest.approx(theirs.item(), rel=1e-6)


def filled_bank(levels, classes, k, d_t, d_s, seed):
    g = torch.Generator().manual_seed(seed)
    bank = PrototypeBank(levels, classes, k, d_t, d_s)
    for lvl in range(len(levels)):
        for c in range(classes):
            n = 1 + (lvl + c) % k  # some classes fill fewer slots
            bank.set_prototypes(lvl, c, torch.rand(n, d_t, generator=g), torch.rand(n, d_s, generator=g),
                                torch.zeros(n, 2, dtype=torch.long))
    return bank


def test_robust_weights_match_the_release():
    """Non-negative features: cosines in [0, 1], so Eq. 8 needs no clamp and both agree."""
    bank = filled_bank(LEVELS, 3, 4, 6, 5, seed=2)
    g = torch.Generator().manual_seed(3)
    x_t, x_s = torch.rand(12, 6, generator=g), torch.rand(12, 5, generator=g)
    levels, classes = torch.arange(12) % 2, torch.arange(12) % 3
    ours = bank.robust_weights(x_t, x_s, levels, classes)
    theirs = torch.stack([
        ref.robust_weight(x_t[i], x_s[i], bank.teacher[levels[i], classes[i]][bank.valid[levels[i], classes[i]]],
                          bank.student[levels[i], classes[i]][bank.valid[levels[i], classes[i]]])
        for i in range(12)
    ])
    assert torch.allclose(ours, theirs, atol=1e-6)


def every_level_batch(x_t, x_s, classes):
    """A batch with the instance features of every level, (L, G, D)."""
    g = x_t.shape[1]
    gt = GroundTruth(torch.zeros(g, 4), classes, torch.zeros(g, dtype=torch.long), torch.zeros(g, dtype=torch.long), [])
    batch = DistillBatch(gt, {}, {}, STRIDES, torch.ones(g))
    batch.instance_feats_teacher_every_level, batch.instance_feats_student_every_level = x_t, x_s
    return batch


def test_release_global_form_matches_the_release_with_per_level_weights():
    bank = filled_bank(LEVELS, 3, 4, 6, 5, seed=4)
    g = torch.Generator().manual_seed(5)
    x_t, x_s = torch.rand(2, 7, 6, generator=g), torch.rand(2, 7, 5, generator=g)
    classes = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    batch = every_level_batch(x_t, x_s, classes)
    batch.gt_weights = torch.full((7,), 0.123)  # the assigned level's weights: not what the release uses
    ours = GlobalKnowledge(weight=1.0, form="release")(batch, bank)["loss_kd_global"]
    proto_classes = torch.arange(3).repeat_interleave(4)
    theirs = sum(
        ref.global_level_loss(x_t[lvl], x_s[lvl], classes, bank.teacher[lvl].flatten(0, 1)[bank.valid[lvl].flatten()],
                              bank.student[lvl].flatten(0, 1)[bank.valid[lvl].flatten()],
                              proto_classes[bank.valid[lvl].flatten()])
        for lvl in range(2)
    )
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_release_global_form_by_hand_recomputes_the_weight_at_each_level():
    """One instance, two levels, one prototype each. Level 0: beta_T 1, beta_S 0.6 -> w 0.6,
    0.5 (0.6 * 0.4)^2; level 1: beta_T 1, beta_S 1/sqrt(2) -> w 1/sqrt(2), 0.5 (w (1 - w))^2."""
    bank = PrototypeBank(LEVELS, 1, 1, 2, 2)
    bank.set_prototypes(0, 0, torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2, dtype=torch.long))
    bank.set_prototypes(1, 0, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2, dtype=torch.long))
    x_t = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    x_s = torch.tensor([[[0.6, 0.8]], [[1.0, 1.0]]])
    batch = every_level_batch(x_t, x_s, torch.tensor([0]))
    batch.gt_weights = torch.tensor([0.6])  # its weight at its assigned level 0
    w1 = 2**-0.5
    expected = 0.5 * (0.6 * 0.4) ** 2 + 0.5 * (w1 * (1 - w1)) ** 2
    loss = GlobalKnowledge(weight=1.0, form="release")(batch, bank)["loss_kd_global"]
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seed", range(20))
def test_pgm_picks_the_releases_prototypes_once_a_chosen_one_is_excluded(seed):
    g = torch.Generator().manual_seed(seed)
    n = 8 + seed  # some cases have fewer candidates than K = 10
    centres = torch.randn(3, 16, generator=g)
    x_t = centres[torch.arange(n) % 3] + 0.3 * torch.randn(n, 16, generator=g)
    x_s = x_t[:, :12] + 0.2 * torch.randn(n, 12, generator=g)
    ours = generate_prototypes(x_t.double(), x_s.double(), num_prototypes=10).tolist()
    assert ours == ref.matching_pursuit(x_t, x_s, 10, exclude_chosen=True)
    assert len(set(ours)) == len(ours)  # gkd_d2: never the same instance twice


# ---------------------------------------------------------------- gkd_d2's side of each table row


def test_overlapping_boxes_take_the_largest_weight_not_the_later_box():
    boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0], [16.0, 16.0, 48.0, 48.0]])
    weights = torch.tensor([0.9, 0.2])
    ours = weighted_box_mask(boxes, torch.tensor([0, 0]), weights, 8, 1, 8, 8)[0]
    release = ref.gt_mask(boxes, [0, 0], weights, 0, 8, 8, 8)
    assert ours[3, 3] == pytest.approx(0.9) and release[3, 3] == pytest.approx(0.2)


def test_a_box_narrower_than_a_cell_marks_a_column_not_one_cell():
    box = torch.tensor([[17.0, 3.0, 20.0, 40.0]])  # 3 px wide, 37 px high, stride 8
    ours = weighted_box_mask(box, torch.tensor([0]), torch.tensor([1.0]), 8, 1, 8, 8)[0]
    assert ours[:, 2].tolist() == [1, 1, 1, 1, 1, 0, 0, 0] and ours.sum() == 5
    assert ref.gt_mask(box, [0], [1.0], 0, 8, 8, 8).sum() == 1


def test_foreground_normaliser_is_two_sum_m_clamped_at_one_without_the_channels():
    s, t = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)  # error 1 per element
    mask = torch.zeros(1, 2, 2)
    mask[0, 0, 0] = 0.1  # 2 sum M = 0.2: the normaliser is clamped to 1
    ours = decoupled_feature_loss(s, t, mask, gamma_fg=1.0, gamma_bg=0.0)
    assert ours.item() == pytest.approx(0.1)  # 0.1 * 1 / max(1, 0.2)
    big = torch.zeros(1, 2, 2)
    big[0, 0, 0] = 0.3  # 2 sum M = 0.6 -> 1 here; 2 C sum M = 2.4 in the release
    assert decoupled_feature_loss(s, t, big, 1.0, 0.0).item() == pytest.approx(0.3)
    assert ref.feature_level_loss(s, t, big, 1.0, 0.0).item() == pytest.approx(0.3 * 4 / 2.4)


def test_eq8_is_clamped_at_zero():
    beta_t, beta_s = torch.tensor([[1.0, -0.9]]), torch.tensor([[-0.8, 0.2]])
    w = robust_weights(beta_t, beta_s, torch.tensor([[True, False]]), torch.tensor([0, 1]), torch.tensor([0]))
    assert w.item() == 0.0  # the release: 1 - |1 - (-0.8)| = -0.8


def test_no_positive_gives_a_zero_response_not_nan():
    zs = torch.randn(3, 4, requires_grad=True)
    loss = positive_response(zs, torch.randn(3, 4), torch.ones(3), torch.zeros(3, dtype=torch.bool), 2.0)
    assert loss.item() == 0.0 and loss.requires_grad
    assert torch.isnan(ref.response_loss(zs[:0], zs[:0], torch.ones(0), 2.0))


def test_attenuation_is_per_iteration():
    model = types.SimpleNamespace(max_iter=1000)
    with EventStorage(start_iter=250):
        assert DistillationDetector.attenuation_factor(model) == pytest.approx(0.75)


def test_adapter_init_default_is_pytorchs_and_kaiming_is_an_option():
    torch.manual_seed(0)
    default = FeatureKnowledge(spec=spec("rcnn"), weight=1.0, gamma_fg=1.0, gamma_bg=4.0).adapters["p3"]
    bound = 1 / (4 * 9) ** 0.5  # PyTorch: weight and bias uniform in +-1/sqrt(fan_in)
    assert default.weight.abs().max() <= bound and default.bias.abs().max() > 0
    kaiming = FeatureKnowledge(spec=spec("rcnn"), weight=1.0, gamma_fg=1.0, gamma_bg=4.0,
                               adapter_init="kaiming").adapters["p3"]
    assert kaiming.bias.abs().max() == 0 and kaiming.weight.abs().max() > bound
    with pytest.raises(ValueError, match="DISTILL.FEATURE.ADAPTER_INIT='xavier'"):
        FeatureKnowledge(spec=spec("rcnn"), weight=1.0, gamma_fg=1.0, gamma_bg=4.0, adapter_init="xavier")


@pytest.mark.slow
def test_default_instance_levels_of_a_faster_rcnn_are_every_fpn_output(rcnn_teacher):
    """The release's level set: P2-P6 (prototypes, instances and masks on P6 too); Detectron2's
    rule keeps the box head's P2-P5. RoIs keep their box pooler's level either way."""
    from detectron2.modeling import build_model
    from helpers import distill_cfg, make_batch, train_losses

    cfg = distill_cfg(rcnn_teacher)
    model = build_model(cfg)
    assert model.instance_levels == ["p2", "p3", "p4", "p5", "p6"]
    assert model.prototypes.valid.shape[0] == 5
    batch = make_batch(((3, 0), (2, 1)))
    assert all(torch.isfinite(v) for v in train_losses(model, batch).values())
    cfg.DISTILL.INSTANCE_LEVELS = "detectron2"
    assert build_model(cfg).instance_levels == ["p2", "p3", "p4", "p5"]
