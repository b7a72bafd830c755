"""Narrow basic-block ResNets with an FPN: cheap students for a real teacher/student capacity gap.

Detectron2's ``build_resnet_backbone`` builds ResNet-18/34 only at full width (it asserts
``MODEL.RESNETS.RES2_OUT_CHANNELS == 64``). The builders here take the width from the same
options and lift that restriction, so a student can be several times cheaper than a ResNet-34
teacher while keeping its FPN levels (the levels distillation pairs; channel mismatches are the
adaptation layers' job):

- ``MODEL.RESNETS.DEPTH``: 10 (one basic block per stage), 18 (2, 2, 2, 2) or 34 (3, 4, 6, 3);
- ``MODEL.RESNETS.STEM_OUT_CHANNELS``: the stem's 7x7 conv width (stride 4 after its max-pool);
- ``MODEL.RESNETS.RES2_OUT_CHANNELS``: res2's width; res3, res4, res5 double it in turn;
- ``MODEL.RESNETS.NORM``, ``OUT_FEATURES``, ``MODEL.BACKBONE.FREEZE_AT`` as in Detectron2.

With ``DEPTH 34``, ``STEM_OUT_CHANNELS 64``, ``RES2_OUT_CHANNELS 64`` the trunk is Detectron2's
ResNet-34 (same modules, same parameter names).

Registered in ``BACKBONE_REGISTRY`` (``MODEL.BACKBONE.NAME``):

- ``build_narrow_resnet_backbone``: the trunk alone, outputs ``res2..res5`` of strides 4, 8,
  16, 32 and channels ``C, 2C, 4C, 8C`` (``C = RES2_OUT_CHANNELS``);
- ``build_narrow_resnet_fpn_backbone``: + FPN on ``MODEL.FPN.IN_FEATURES`` and a max-pooled
  top level (as ``build_resnet_fpn_backbone``: Faster R-CNN's ``p2..p6``, strides 4..64);
- ``build_retinanet_narrow_resnet_fpn_backbone``: + FPN and ``p6``, ``p7`` from ``res5`` (as
  ``build_retinanet_resnet_fpn_backbone``: RetinaNet's / FCOS's ``p3..p7``, strides 8..128).

Every FPN output has ``MODEL.FPN.OUT_CHANNELS`` channels.
"""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet

__all__ = [
    "NARROW_RESNET_BLOCKS",
    "build_narrow_resnet_backbone",
    "build_narrow_resnet_fpn_backbone",
    "build_retinanet_narrow_resnet_fpn_backbone",
]

#: MODEL.RESNETS.DEPTH -> basic blocks in res2, res3, res4, res5
NARROW_RESNET_BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def _check_widths(cfg):
    r = cfg.MODEL.RESNETS
    if r.DEPTH not in NARROW_RESNET_BLOCKS:
        raise ValueError(
            f"MODEL.RESNETS.DEPTH = {r.DEPTH}: a narrow basic-block ResNet has depth "
            f"{' / '.join(map(str, NARROW_RESNET_BLOCKS))}."
        )
    for key in ("STEM_OUT_CHANNELS", "RES2_OUT_CHANNELS"):
        if not isinstance(r[key], int) or r[key] < 1:
            raise ValueError(f"MODEL.RESNETS.{key} = {r[key]!r}: must be a positive integer.")
    if r.NORM == "GN" and (r.STEM_OUT_CHANNELS % 32 or r.RES2_OUT_CHANNELS % 32):
        raise ValueError(
            "MODEL.RESNETS.NORM = 'GN' uses 32 groups: STEM_OUT_CHANNELS and RES2_OUT_CHANNELS "
            f"({r.STEM_OUT_CHANNELS}, {r.RES2_OUT_CHANNELS}) must be multiples of 32."
        )
    if r.NUM_GROUPS != 1 or r.RES5_DILATION != 1 or any(r.DEFORM_ON_PER_STAGE):
        raise ValueError(
            "a narrow basic-block ResNet needs MODEL.RESNETS.NUM_GROUPS 1, RES5_DILATION 1 and no "
            "DEFORM_ON_PER_STAGE."
        )


@BACKBONE_REGISTRY.register()
def build_narrow_resnet_backbone(cfg, input_shape: ShapeSpec):
    """A basic-block :class:`ResNet` of ``MODEL.RESNETS.DEPTH`` (10/18/34) whose widths are
    ``STEM_OUT_CHANNELS`` (stem) and ``RES2_OUT_CHANNELS`` doubled per stage. Input (N, 3, H, W);
    outputs ``OUT_FEATURES`` among res2..res5: (N, C * 2^(k-2), H / 2^k, W / 2^k) for res<k>."""
    _check_widths(cfg)
    r = cfg.MODEL.RESNETS
    stem = BasicStem(in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM)
    in_channels, out_channels, stages = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS, []
    for idx, num_blocks in enumerate(NARROW_RESNET_BLOCKS[r.DEPTH]):
        first_stride = 1 if idx == 0 else 2
        stages.append(
            ResNet.make_stage(
                block_class=BasicBlock,
                num_blocks=num_blocks,
                stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                in_channels=in_channels,
                out_channels=out_channels,
                norm=r.NORM,
            )
        )
        in_channels, out_channels = out_channels, out_channels * 2
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


def _fpn(cfg, bottom_up, top_block):
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_narrow_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """The narrow ResNet + FPN with a max-pooled top level: with ``FPN.IN_FEATURES``
    res2..res5, outputs p2..p6 (strides 4, 8, 16, 32, 64), each ``FPN.OUT_CHANNELS`` wide."""
    return _fpn(cfg, build_narrow_resnet_backbone(cfg, input_shape), LastLevelMaxPool())


@BACKBONE_REGISTRY.register()
def build_retinanet_narrow_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """The narrow ResNet + FPN with p6, p7 computed from res5: with ``FPN.IN_FEATURES``
    res3..res5, outputs p3..p7 (strides 8, 16, 32, 64, 128), each ``FPN.OUT_CHANNELS`` wide."""
    bottom_up = build_narrow_resnet_backbone(cfg, input_shape)
    in_channels_p6p7 = bottom_up.output_shape()["res5"].channels
    return _fpn(cfg, bottom_up, LastLevelP6P7(in_channels_p6p7, cfg.MODEL.FPN.OUT_CHANNELS))
