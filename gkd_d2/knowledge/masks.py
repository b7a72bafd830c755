"""Foreground masks of GT boxes on feature maps, built with tensor operations only."""
import torch


def box_cells(boxes: torch.Tensor, stride: int):
    """Cell ranges a box covers on a map of ``stride``: ``[floor(x1/s), max(floor(x2/s), floor(x1/s)+1))``.

    boxes (G, 4) XYXY pixels -> x0, x1, y0, y1, each (G,) long (half-open ranges).
    """
    lo = torch.floor(boxes / stride).long()
    x0, y0, x2, y2 = lo.unbind(1)
    return x0, torch.maximum(x2, x0 + 1), y0, torch.maximum(y2, y0 + 1)


def weighted_box_mask(
    boxes: torch.Tensor,
    image_index: torch.Tensor,
    weights: torch.Tensor,
    stride: int,
    num_images: int,
    height: int,
    width: int,
) -> torch.Tensor:
    """M (B, H, W): at each cell, the largest weight of the boxes covering it (0 elsewhere).

    boxes (G, 4) XYXY pixels of the boxes assigned to this level; image_index (G,);
    weights (G,) >= 0. No Python loop over boxes: coverage is (G, H, W) comparisons, reduced
    per image with ``scatter_reduce_(amax)``.
    """
    mask = boxes.new_zeros(num_images, height, width)
    if boxes.shape[0] == 0:
        return mask
    x0, x1, y0, y1 = box_cells(boxes, stride)
    xs = torch.arange(width, device=boxes.device)
    ys = torch.arange(height, device=boxes.device)
    cover_x = (xs[None] >= x0[:, None]) & (xs[None] < x1[:, None])  # (G, W)
    cover_y = (ys[None] >= y0[:, None]) & (ys[None] < y1[:, None])  # (G, H)
    cover = cover_y[:, :, None] & cover_x[:, None, :]  # (G, H, W)
    values = (cover.to(mask.dtype) * weights.to(mask.dtype)[:, None, None]).flatten(1)
    index = image_index[:, None].expand_as(values)
    mask.view(num_images, -1).scatter_reduce_(0, index, values, "amax", include_self=True)
    return mask
