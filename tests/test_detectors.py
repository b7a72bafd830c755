"""Detector families: the copies of Detectron2's labelling are pinned to Detectron2's own, and the
box-coder conversion of a cascade teacher's deltas is exact."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from helpers import tiny_cfg

from gkd_d2.detectors import label_anchors, reencode_deltas
from gkd_d2.detectors.fcos import label_locations


def random_gt(num_images, size, seed, num_classes=3):
    """Per image 0-5 random boxes (one image without any), classes in [0, num_classes)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(num_images):
        n = 0 if i == 1 else int(torch.randint(1, 6, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * size * 0.7
        wh = 4 + torch.rand(n, 2, generator=g) * size * 0.5
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=size)], dim=1))
        inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
        out.append(inst)
    return out


def anchors_of(model, size=128):
    feats = [torch.zeros(1, 1, -(-size // s), -(-size // s)) for s in (8, 16, 32, 64, 128)]
    return model.anchor_generator(feats)


def check_matched_gt(labels, boxes, matched_gt, gt, num_classes):
    """matched_gt indexes the batch's flattened GT: class and box of every positive agree."""
    flat_boxes = torch.cat([x.gt_boxes.tensor for x in gt])
    flat_classes = torch.cat([x.gt_classes for x in gt])
    labels = torch.stack(labels)
    positive = (labels >= 0) & (labels < num_classes)
    assert torch.equal(matched_gt >= 0, positive)
    assert torch.equal(flat_classes[matched_gt[positive]], labels[positive])
    assert torch.equal(flat_boxes[matched_gt[positive]], torch.stack(boxes)[positive])
    assert positive.any()


def labels_equal_detectron2s(label_fn, model, anchors, gt):
    """``label_fn`` gives Detectron2's own ``model.label_anchors`` labels and boxes, exactly, and a
    consistent matched GT. Returns the labels."""
    labels, boxes, matched_gt = label_fn(model, anchors, gt)
    ref_labels, ref_boxes = model.label_anchors(anchors, gt)
    assert all(torch.equal(a, b) for a, b in zip(labels, ref_labels))
    assert all(torch.equal(a, b) for a, b in zip(boxes, ref_boxes))
    check_matched_gt(labels, boxes, matched_gt, gt, model.num_classes)
    return torch.stack(labels)


def test_label_anchors_equals_detectron2_retinanet():
    model = build_model(tiny_cfg("RetinaNet"))
    anchors = anchors_of(model)
    # random GT, one image of each batch without any
    labels = [labels_equal_detectron2s(label_anchors, model, anchors, random_gt(3, 128, s)) for s in range(4)]
    assert any((x == -1).any() for x in labels)  # ignored anchors occurred, with no matched GT


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_locations_equals_detectron2_fcos(seed):
    model = build_model(tiny_cfg("FCOS"))
    labels_equal_detectron2s(label_locations, model, anchors_of(model), random_gt(3, 128, seed))


def test_reencode_deltas_with_cascade_box_coder_weights():
    """Deltas of the cascade's last stage (weights 30, 30, 15, 15) re-encoded for a Faster R-CNN
    (10, 10, 5, 5) decode to the same boxes, and equal the hand-computed targets."""
    src = Box2BoxTransform(weights=(30.0, 30.0, 15.0, 15.0))
    dst = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    proposals = torch.tensor([[10.0, 20.0, 50.0, 40.0], [0.0, 0.0, 8.0, 16.0]])
    deltas = torch.tensor([[0.3, -0.6, 0.15, -0.3, 0.0, 0.0, 0.0, 0.0], [3.0, 1.5, 0.3, 0.45, -3.0, 0.0, 0.15, 0.0]])
    out = reencode_deltas(deltas, proposals, src, dst)
    assert out.shape == deltas.shape
    # translations scale by 10/30, log-sizes by 5/15: the same box in the other encoding
    expected = deltas.view(2, 2, 4) / torch.tensor([3.0, 3.0, 3.0, 3.0])
    assert torch.allclose(out.view(2, 2, 4), expected, atol=1e-5)
    boxes_src = src.apply_deltas(deltas, proposals)
    boxes_dst = dst.apply_deltas(out, proposals)
    assert torch.allclose(boxes_src, boxes_dst, atol=1e-4)
    assert reencode_deltas(deltas, proposals, dst, dst) is deltas  # same coder: untouched


@pytest.mark.parametrize("arch", ["RetinaNet", "FCOS"])
def test_teacher_class_logits_skip_the_box_branch_with_the_whole_heads_values(arch):
    """The teacher's response logits come from the head's class branch alone: the same values as
    Detectron2's whole head (permuted and concatenated like ``DenseDetector``), box branch never run;
    a head with its own ``forward`` runs whole."""
    from gkd_d2.detectors.dense import dense_class_logits, dense_predictions

    torch.manual_seed(0)
    model = build_model(tiny_cfg(arch)).eval()
    images = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        features = model.backbone(images)
        dims = [model.num_classes, 4] + ([1] if arch == "FCOS" else [])  # logits, deltas (, centerness)
        expected = torch.cat(dense_predictions(model, features, dims)[0][0], dim=1)  # the whole head
        calls = []
        hook = model.head.bbox_subnet.register_forward_hook(lambda *a: calls.append(1))
        got = dense_class_logits(model, features, model.num_classes)
        assert torch.equal(got, expected) and not calls
        # a custom head (its own forward): run whole, same values
        head_type = type(model.head)
        model.head.__class__ = type("CustomHead", (head_type,), {"forward": lambda self, x: head_type.forward(self, x)})
        assert torch.equal(dense_class_logits(model, features, model.num_classes), expected) and calls
        hook.remove()
