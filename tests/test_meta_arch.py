"""DistillationDetector: gradients, frozen teacher, inference = student, errors."""
import copy

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from helpers import NUM_CLASSES, TEACHER_FIXTURES, distill_cfg, fill_prototypes_from_batch, make_batch, make_teacher, train_losses

from gkd_d2 import DistillationCheckpointer

ARCHS = ["GeneralizedRCNN", "RetinaNet", "FCOS"]


def teacher_of(arch, request):
    return request.getfixturevalue(TEACHER_FIXTURES[arch])


@pytest.mark.parametrize("arch", ARCHS)
def test_losses_finite_and_gradients_reach_student_and_adapters_only(arch, request):
    torch.manual_seed(0)
    model = build_model(distill_cfg(teacher_of(arch, request), arch))
    # Prototypes so the global term is not trivially zero.
    fill_prototypes_from_batch(model, make_batch(((3, 0), (3, 1))))
    losses = train_losses(model, make_batch(((2, 0), (3, 1))))
    kd = {k: v for k, v in losses.items() if k.startswith("loss_kd_")}
    assert set(kd) == {"loss_kd_feature", "loss_kd_response", "loss_kd_global"}
    for name, value in kd.items():
        assert torch.isfinite(value), name
        model.zero_grad(set_to_none=True)
        value.backward(retain_graph=True)
        student_grad = sum(
            p.grad.abs().sum() for p in model.student.parameters() if p.grad is not None
        )
        assert student_grad > 0, f"{name} does not reach the student"
        assert all(p.grad is None for p in model.teacher.parameters()), name
        adapter_grads = [p.grad for p in model.knowledge.parameters()]
        if name == "loss_kd_feature":
            assert all(g is not None and g.abs().sum() > 0 for g in adapter_grads)
    assert all(not p.requires_grad for p in model.teacher.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_teacher_frozen_and_in_eval_mode_through_training(arch, request):
    from detectron2.solver import build_optimizer

    cfg = distill_cfg(teacher_of(arch, request), arch)
    cfg.SOLVER.BASE_LR = 1e-6  # random teacher features are huge; only the freezing matters
    model = build_model(cfg)
    before = copy.deepcopy(model.teacher.state_dict())
    optimizer = build_optimizer(cfg, model)
    teacher_params = {id(p) for p in model.teacher.parameters()}
    assert not any(id(p) in teacher_params for g in optimizer.param_groups for p in g["params"])
    for it in range(3):
        model.train()
        assert not model.teacher.training
        assert all(not m.training for m in model.teacher.modules())
        losses = train_losses(model, make_batch(((2, 0), (1, 2)), seed=it), it)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    after = model.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats included
    assert model.student.training and not model.teacher.training


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_output_equals_student_alone(arch, request):
    torch.manual_seed(0)
    model = build_model(distill_cfg(teacher_of(arch, request), arch))
    # Give the student some trained-looking weights: the teacher's (a student of the same
    # width is not needed: compare the wrapper with its own student module).
    model.eval()
    batch = [{k: v for k, v in x.items() if k != "instances"} for x in make_batch(((2, 0),))]
    with torch.no_grad():
        wrapped = model(batch)
        alone = model.student(batch)
    assert len(wrapped) == len(alone)
    for a, b in zip(wrapped, alone):
        a, b = a["instances"], b["instances"]
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores)
        assert torch.equal(a.pred_classes, b.pred_classes)


@pytest.mark.parametrize("arch", ARCHS)
def test_student_equal_to_teacher_gives_zero_response_and_global_loss(arch, tmp_path):
    # Same architecture, same width, same weights; FrozenBN so train/eval modes agree.
    teacher = make_teacher(tmp_path, arch, fpn_channels=16, norm="FrozenBN")
    cfg = distill_cfg(teacher, arch, norm="FrozenBN")
    model = build_model(cfg)
    DistillationCheckpointer(model).load(teacher[1])  # plain checkpoint -> student only
    fill_prototypes_from_batch(model, make_batch(((3, 0), (2, 1)), seed=5))
    losses = train_losses(model, make_batch(((2, 0), (3, 1))))
    assert losses["loss_kd_response"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_kd_global"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_kd_feature"].item() > 0  # adapters start random: not a zero-loss term


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_without_gt_boxes(arch, request):
    model = build_model(distill_cfg(teacher_of(arch, request), arch))
    fill_prototypes_from_batch(model, make_batch(((3, 0),)))
    for batch in (make_batch(((0, 0), (2, 1))), make_batch(((0, 0), (0, 0)))):
        losses = train_losses(model, batch)
        for k, v in losses.items():
            assert torch.isfinite(v), k
        sum(losses.values()).backward()
    # No GT at all: no instance, so no global knowledge; every cell is background, so the
    # feature term is gamma_bg * mean over levels of sum(E) / (2 * cells), E the per-cell
    # channel mean of (F_T - A(F_S))^2; FCOS has no positive location, so no response.
    assert losses["loss_kd_global"].item() == 0.0
    with torch.no_grad():
        s_feats, t_feats = model.student_features(batch), model.teacher_features(batch)
        term = model.knowledge["feature"]
        per_level = torch.stack(
            [(t_feats[f] - term.adapters[f](s_feats[f])).pow(2).mean(dim=1).mean() / 2 for f in term.levels]
        )
        # levels averaged for a two-stage student, summed for a dense one (the release)
        expected = term.gamma_bg * (per_level.mean() if arch == "GeneralizedRCNN" else per_level.sum())
    assert losses["loss_kd_feature"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses["loss_kd_response"].item() == 0.0  # the release's form: positives only


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.slow
def test_teacher_equal_to_trained_student_with_batchnorm_in_training_mode(arch, tmp_path):
    """The configs users run: a BatchNorm student (not FrozenBN) in training mode, prototypes
    pooled in eval mode. With DISTILL.FREEZE_STUDENT_BN (the default) the student is the same
    function in both modes: robust weights 1, response and global losses 0. Without it, the
    batch statistics of training mode make the student another function than the teacher."""
    teacher = make_teacher(tmp_path, arch, fpn_channels=16)  # BN, calibrated running statistics
    results = {}
    for freeze in (True, False):
        model = build_model(distill_cfg(teacher, arch, freeze_bn=freeze))
        DistillationCheckpointer(model).load(teacher[1])  # plain checkpoint -> student only
        fill_prototypes_from_batch(model, make_batch(((3, 0), (2, 1)), seed=5))
        model.train()
        assert model.student.training and model.teacher.training is False
        with EventStorage(0) as storage:
            losses = model(make_batch(((2, 0), (3, 1))))
            weight = storage.latest()["kd/robust_weight_mean"][0]
        results[freeze] = (weight, losses["loss_kd_response"].item(), losses["loss_kd_global"].item())
    weight, response, global_ = results[True]
    assert weight == pytest.approx(1.0, abs=1e-6)
    assert response == pytest.approx(0.0, abs=1e-6) and global_ == pytest.approx(0.0, abs=1e-6)
    weight, response, global_ = results[False]
    assert weight < 1 - 1e-4 and response > 1e-6 and global_ > 1e-8


@pytest.mark.parametrize("arch", ["GeneralizedRCNN", "RetinaNet"])
@pytest.mark.slow
def test_flattened_instance_pooling(arch, tmp_path):
    """DISTILL.INSTANCE_POOLING "flatten": instance vectors are the 7x7 grids (49 D), whose
    average over the grid is the default "mean" vector; the bank holds 49 D-wide prototypes;
    teacher == student still gives robust weights 1 and zero response / global losses."""
    teacher = make_teacher(tmp_path, arch, fpn_channels=16)
    cfg = distill_cfg(teacher, arch, freeze_bn=True, knowledge=("response", "global"))
    model = build_model(cfg)
    cfg.DISTILL.INSTANCE_POOLING = "flatten"
    flat = build_model(cfg)
    assert flat.prototypes.teacher.shape[-1] == 49 * model.prototypes.teacher.shape[-1] == 49 * 16
    DistillationCheckpointer(flat).load(teacher[1])
    batch = make_batch(((2, 0), (3, 1)))
    with torch.no_grad():
        gt = flat.ground_truth([b["instances"] for b in batch])
        feats = flat.teacher_features(batch)
        grid, mean = flat.pool_instances(feats, gt), model.pool_instances(feats, gt)
    assert grid.shape == (len(gt), 49 * 16)
    torch.testing.assert_close(grid.view(len(gt), 16, 49).mean(-1), mean)
    fill_prototypes_from_batch(flat, make_batch(((3, 0), (2, 1)), seed=5))
    flat.train()
    with EventStorage(0) as storage:
        losses = flat(batch)
        weight = storage.latest()["kd/robust_weight_mean"][0]
    assert weight == pytest.approx(1.0, abs=1e-6)
    assert losses["loss_kd_response"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_kd_global"].item() == pytest.approx(0.0, abs=1e-6)


def test_unknown_instance_pooling(rcnn_teacher):
    cfg = distill_cfg(rcnn_teacher)
    cfg.DISTILL.INSTANCE_POOLING = "max"
    with pytest.raises(ValueError, match="DISTILL.INSTANCE_POOLING='max': choose one of"):
        build_model(cfg)


def test_missing_teacher_weights_file(rcnn_teacher, tmp_path):
    cfg = distill_cfg((rcnn_teacher[0], str(tmp_path / "nope.pth")))
    with pytest.raises(FileNotFoundError, match="DISTILL.TEACHER.WEIGHTS.*nope.pth"):
        build_model(cfg)


def test_missing_teacher_config_file(rcnn_teacher, tmp_path):
    cfg = distill_cfg((str(tmp_path / "missing.yaml"), rcnn_teacher[1]))
    with pytest.raises(FileNotFoundError, match="DISTILL.TEACHER.CONFIG_FILE.*missing.yaml"):
        build_model(cfg)


@pytest.mark.slow
def test_teacher_with_other_number_of_classes(tmp_path):
    teacher = make_teacher(tmp_path, "GeneralizedRCNN", num_classes=NUM_CLASSES + 2)
    with pytest.raises(ValueError, match="teacher predicts 5 classes but the student 3"):
        build_model(distill_cfg(teacher))


@pytest.mark.slow
def test_teacher_weights_of_other_number_of_classes(tmp_path, rcnn_teacher):
    # Config says 3 classes, checkpoint has 5: Detectron2 alone would skip those tensors.
    other = make_teacher(tmp_path, "GeneralizedRCNN", num_classes=NUM_CLASSES + 2)
    with pytest.raises(ValueError, match="number of classes.*cls_score"):
        build_model(distill_cfg((rcnn_teacher[0], other[1])))


def test_unknown_student_architecture(rcnn_teacher):
    cfg = distill_cfg(rcnn_teacher)
    cfg.DISTILL.STUDENT_ARCHITECTURE = "YOLO"
    with pytest.raises(ValueError, match="DISTILL.STUDENT_ARCHITECTURE='YOLO' is not supported"):
        build_model(cfg)


def test_unknown_knowledge_term(rcnn_teacher):
    cfg = distill_cfg(rcnn_teacher, knowledge=("feature", "telepathy"))
    with pytest.raises(ValueError, match="DISTILL.KNOWLEDGE: unknown knowledge term 'telepathy'"):
        build_model(cfg)


def test_fpn_levels_must_match(rcnn_teacher):
    cfg = distill_cfg(rcnn_teacher)
    cfg.DISTILL.FEATURE.IN_FEATURES = ["p2", "p9"]
    with pytest.raises(ValueError, match="FPN level names of the teacher and the student differ"):
        build_model(cfg)


def test_response_needs_teacher_of_same_kind(retina_teacher):
    with pytest.raises(ValueError, match="response knowledge needs a teacher of the student's kind"):
        build_model(distill_cfg(retina_teacher, "GeneralizedRCNN"))


def test_negative_weight_rejected(rcnn_teacher):
    cfg = distill_cfg(rcnn_teacher)
    cfg.DISTILL.GLOBAL.WEIGHT = -1.0
    with pytest.raises(ValueError, match="DISTILL.GLOBAL.WEIGHT=-1.0"):
        build_model(cfg)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("PERIOD", -1, r"DISTILL.PGM.PERIOD=-1: must be >= 1 iteration, or 0 for one epoch"),
        ("NUM_PROTOTYPES", 0, r"DISTILL.PGM.NUM_PROTOTYPES=0: must be >= 1"),
        ("SIGMA", 0.0, r"DISTILL.PGM.SIGMA=0.0: must be > 0"),
        ("QUANTILE", 1.0, r"DISTILL.PGM.QUANTILE=1.0: must be in \[0, 1\)"),
    ],
)
def test_bad_pgm_options_name_the_option(rcnn_teacher, key, value, message):
    cfg = distill_cfg(rcnn_teacher)
    cfg.DISTILL.PGM[key] = value
    with pytest.raises(ValueError, match=message):
        build_model(cfg)


@pytest.mark.parametrize("kernel", [1, 3])
def test_feature_adapter_kernel_option(rcnn_teacher, kernel):
    cfg = distill_cfg(rcnn_teacher)
    cfg.DISTILL.KNOWLEDGE = ["feature"]
    cfg.DISTILL.FEATURE.ADAPTER_KERNEL = kernel
    cfg.DISTILL.FEATURE.ADAPTER_RELU = True  # the paper's text
    model = build_model(cfg)
    adapters = model.knowledge["feature"].adapters
    assert set(adapters) == set(model.feature_levels)
    for conv, _relu in adapters.values():
        assert conv.kernel_size == (kernel, kernel) and conv.padding == (kernel // 2, kernel // 2)
    # The 1x1 adapter is the pointwise linear map + ReLU of the student's features.
    conv, _ = adapters["p3"]
    x = torch.randn(2, conv.in_channels, 5, 7)
    y = adapters["p3"](x)
    linear = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x) + conv.bias[None, :, None, None]
    if kernel == 1:
        assert torch.allclose(y, torch.relu(linear), atol=1e-5)
    assert y.shape == (2, conv.out_channels, 5, 7)
    # The default (the release): the conv alone, which can output the teacher's negative values.
    cfg.DISTILL.FEATURE.ADAPTER_RELU = False
    plain = build_model(cfg).knowledge["feature"].adapters["p3"]
    assert isinstance(plain, torch.nn.Conv2d) and plain.kernel_size == (kernel, kernel)
    if kernel == 1:
        plain.load_state_dict(conv.state_dict())
        assert torch.allclose(plain(x), linear, atol=1e-5) and (plain(x) < 0).any()


@pytest.mark.parametrize("value", [0, 2, -1])
def test_bad_adapter_kernel_names_the_option(rcnn_teacher, value):
    cfg = distill_cfg(rcnn_teacher)
    cfg.DISTILL.FEATURE.ADAPTER_KERNEL = value
    with pytest.raises(ValueError, match=rf"DISTILL.FEATURE.ADAPTER_KERNEL={value}: .* odd positive integer"):
        build_model(cfg)


def test_attenuation_applies_to_the_listed_terms_only(rcnn_teacher):
    """DISTILL.ATTENUATION (on by default) scales feature and global by 1 - iter / max_iter and
    leaves the response term alone (the release); ATTENUATED_TERMS lists the scaled terms."""
    cfg = distill_cfg(rcnn_teacher)
    cfg.SOLVER.MAX_ITER = 10
    model = build_model(cfg)
    fill_prototypes_from_batch(model, make_batch(((3, 0), (3, 1))))
    batch = make_batch(((2, 0), (3, 1)))
    torch.manual_seed(0)
    at0 = train_losses(model, batch, it=0)
    torch.manual_seed(0)
    at5 = train_losses(model, batch, it=5)
    for key, factor in (("loss_kd_feature", 0.5), ("loss_kd_global", 0.5), ("loss_kd_response", 1.0)):
        assert at5[key].item() == pytest.approx(factor * at0[key].item(), rel=1e-5), key
    assert at0["loss_kd_global"].item() > 0


def test_eval_mode_gives_every_submodule_its_mode_back():
    """The refresh and the visualisation switch the student to eval mode and back: a frozen
    BatchNorm (DISTILL.FREEZE_STUDENT_BN) of a training student must stay frozen."""
    from gkd_d2.utils import eval_mode

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.BatchNorm2d(1))
    net.train()
    net[1].eval()
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert net.training and net[0].training and not net[1].training
