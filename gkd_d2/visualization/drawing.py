"""Drawing the prototypes: galleries, the relation-discrepancy histogram (Figure 1, right) and
robust-weight overlays.

Plots use matplotlib's object API (``Figure`` + Agg canvas, no ``pyplot``: the global backend is
never changed); the gallery is drawn with PIL so its pixel size is exact.
"""
import math
import os
from typing import Optional, Sequence

import numpy as np

from ..data.images import read_image
from ..utils import unwrap_model
from .analysis import (
    ImageRobustWeights,
    InstanceFeatures,
    annotation_xyxy,
    robust_weight_stats,
    sampled_instance_features,
)


def _new_figure(width_in, height_in, dpi=100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def discrepancy_histogram(with_prototypes, with_random, path, bins=40, title=None) -> dict:
    """Figure 1 (right): overlaid histograms of the relation discrepancy with PGM prototypes and
    with random instances as bases, the means in the legend, written to ``path`` (PNG).

    with_prototypes (M,), with_random (M',): values in [0, 1], e.g. from
    ``RelationDiscrepancy.values()``.
    Returns ``{"path", "prototypes", "random" (float64 arrays), "mean_prototypes", "mean_random"}``
    (a mean is NaN for an empty array).
    """
    proto = np.asarray(with_prototypes, dtype=np.float64).reshape(-1)
    rand = np.asarray(with_random, dtype=np.float64).reshape(-1)
    mean_p = float(proto.mean()) if proto.size else float("nan")
    mean_r = float(rand.mean()) if rand.size else float("nan")
    fig = _new_figure(6.4, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    # densities, so several random trials (more values) compare with one prototype set
    if rand.size:
        ax.hist(
            rand,
            bins=edges,
            density=True,
            alpha=0.55,
            color="tab:orange",
            label=f"random instances (mean {mean_r:.3f}, n={rand.size})",
        )
    if proto.size:
        ax.hist(
            proto,
            bins=edges,
            density=True,
            alpha=0.55,
            color="tab:blue",
            label=f"PGM prototypes (mean {mean_p:.3f}, n={proto.size})",
        )
    for m, colour in ((mean_r, "tab:orange"), (mean_p, "tab:blue")):
        if np.isfinite(m):
            ax.axvline(m, color=colour, linestyle="--", linewidth=1.2)
    ax.set_xlim(0, 1)
    ax.set_xlabel(
        r"discrepancy $|\max_j \beta_{T,ij} - \max_j \beta_{S,ij}|$ (= 1 - robust weight)"
    )
    ax.set_ylabel("density")
    ax.set_title(title or "Teacher/student relation discrepancy by choice of bases")
    if proto.size or rand.size:
        ax.legend(loc="upper right", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return {
        "path": path,
        "prototypes": proto,
        "random": rand,
        "mean_prototypes": mean_p,
        "mean_random": mean_r,
    }


def _font(size):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _cell_image(image, box, cell_size, margin):
    """(cell, cell, 3) uint8: ``box`` (XYXY) cropped from ``image`` (H, W, 3) with ``margin`` x
    its longer side around it, fitted in the cell (aspect kept), the box drawn in yellow."""
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    pad = margin * max(x1 - x0, y1 - y0) + 2
    cx0, cy0 = int(max(0, math.floor(x0 - pad))), int(max(0, math.floor(y0 - pad)))
    cx1, cy1 = int(min(w, math.ceil(x1 + pad))), int(min(h, math.ceil(y1 + pad)))
    crop = Image.fromarray(
        np.ascontiguousarray(image[cy0 : max(cy1, cy0 + 1), cx0 : max(cx1, cx0 + 1)])
    )
    scale = cell_size / max(crop.width, crop.height)
    size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    crop = crop.resize(size, Image.BILINEAR)
    cell = Image.new("RGB", (cell_size, cell_size), (40, 40, 40))
    ox, oy = (cell_size - size[0]) // 2, (cell_size - size[1]) // 2
    cell.paste(crop, (ox, oy))
    draw = ImageDraw.Draw(cell)
    draw.rectangle(
        [
            ox + (x0 - cx0) * scale,
            oy + (y0 - cy0) * scale,
            ox + (x1 - cx0) * scale - 1,
            oy + (y1 - cy0) * scale - 1,
        ],
        outline=(255, 220, 0),
        width=2,
    )
    return cell


def prototype_gallery(
    model,
    dataset_dicts: Sequence[dict],
    class_names: Optional[Sequence[str]],
    output_dir: str,
    cfg=None,
    features: Optional[InstanceFeatures] = None,
    cell_size: int = 96,
    label_width: int = 190,
    header_height: int = 30,
    margin: float = 0.25,
    prefix: str = "gallery_",
) -> dict:
    """One PNG per instance level, ``output_dir/{prefix}{level}.png``, of the prototypes of a
    filled :class:`PrototypeBank` (``model.prototypes``).

    Layout (exact pixel size): width ``label_width + K * cell_size``, height
    ``header_height + C * cell_size``; row c = class c, column k = slot k. A cell is the crop of
    the prototype instance (found by ``source`` = (image id, annotation index) in
    ``dataset_dicts``; an image without ``image_id`` has its position as id, as in sampling)
    with a ``margin`` x box-size context, the box in yellow, ``img <id> #<ann>`` written under
    it; empty slots are grey. The label column gives the class name and the mean / min of the
    Eq. 8 robust weights of the class's sampled instances pooled at that level, against the
    current prototypes (:func:`robust_weight_stats`), and how many there are.

    ``features`` (from :func:`sampled_instance_features`) or ``cfg`` (to compute them) is needed
    for the statistics. Returns ``{"paths": {level: path}, "mean", "min", "count": (L, C)}``.
    """
    from PIL import Image, ImageDraw

    model = unwrap_model(model)
    bank = model.prototypes
    if bank is None:
        raise ValueError(
            "prototype_gallery: the model has no PrototypeBank (DISTILL.PGM.ENABLED is False)."
        )
    if features is None:
        if cfg is None:
            raise ValueError(
                "prototype_gallery needs `features` or `cfg` for the robust-weight statistics."
            )
        features = sampled_instance_features(cfg, model, dataset_dicts)
    stats = robust_weight_stats(bank, features)
    num_levels, c, k = bank.valid.shape
    names = list(class_names) if class_names is not None else []
    names += [f"class {i}" for i in range(len(names), c)]
    by_id = {int(d.get("image_id", i)): d for i, d in enumerate(dataset_dicts)}
    valid = bank.valid.cpu()
    source = bank.source.cpu()
    images = {}

    def image_of(image_id):
        if image_id not in images:
            images[image_id] = read_image(by_id[image_id]["file_name"], format="RGB")
        return images[image_id]

    # label fonts and line positions follow the cell size so three lines fit in a row
    big_px, small_px = max(9, min(14, cell_size // 5)), max(8, min(11, cell_size // 6))
    big, small = _font(big_px), _font(small_px)
    line_y = [2, 2 + big_px + 5, 2 + big_px + 5 + small_px + 3]
    os.makedirs(output_dir, exist_ok=True)
    paths = {}
    for li, level in enumerate(bank.levels):
        canvas = Image.new(
            "RGB", (label_width + k * cell_size, header_height + c * cell_size), (255, 255, 255)
        )
        draw = ImageDraw.Draw(canvas)
        draw.text((6, 4), f"level {level}", fill=(0, 0, 0), font=big)
        for j in range(k):
            draw.text(
                (label_width + j * cell_size + cell_size // 2 - 8, 6),
                f"#{j}",
                fill=(0, 0, 0),
                font=small,
            )
        for ci in range(c):
            y = header_height + ci * cell_size
            n = int(stats["count"][li, ci])
            lines = [f"n={n} sampled, {int(valid[li, ci].sum())} protos"]
            if n:
                lines.insert(
                    0,
                    f"w mean {float(stats['mean'][li, ci]):.3f}  "
                    f"min {float(stats['min'][li, ci]):.3f}",
                )
            draw.text((6, y + line_y[0]), names[ci], fill=(0, 0, 0), font=big)
            for t, line in enumerate(lines):
                draw.text((6, y + line_y[1 + t]), line, fill=(60, 60, 60), font=small)
            draw.line([(0, y), (canvas.width, y)], fill=(200, 200, 200))
            for j in range(k):  # drawing cells (not training code)
                x = label_width + j * cell_size
                if not bool(valid[li, ci, j]):
                    draw.rectangle(
                        [x + 1, y + 1, x + cell_size - 2, y + cell_size - 2], fill=(225, 225, 225)
                    )
                    draw.text(
                        (x + 6, y + cell_size // 2 - 6), "empty", fill=(130, 130, 130), font=small
                    )
                    continue
                image_id, ann = int(source[li, ci, j, 0]), int(source[li, ci, j, 1])
                if image_id not in by_id:
                    draw.rectangle(
                        [x + 1, y + 1, x + cell_size - 2, y + cell_size - 2], fill=(255, 210, 210)
                    )
                    draw.text(
                        (x + 4, y + cell_size // 2 - 6),
                        f"img {image_id}?",
                        fill=(150, 0, 0),
                        font=small,
                    )
                    continue
                box = annotation_xyxy(by_id[image_id]["annotations"][ann])
                canvas.paste(
                    _cell_image(image_of(image_id), box, cell_size - 2, margin), (x + 1, y + 1)
                )
                label = f"img {image_id} #{ann}"
                tw = draw.textlength(label, font=small)
                ty = y + cell_size - small_px - 4
                draw.rectangle([x + 1, ty, x + 3 + tw, y + cell_size - 2], fill=(0, 0, 0))
                draw.text((x + 2, ty), label, fill=(255, 255, 255), font=small)
        path = os.path.join(output_dir, f"{prefix}{level}.png")
        canvas.save(path)
        paths[level] = path
    return {"paths": paths, "mean": stats["mean"], "min": stats["min"], "count": stats["count"]}


def draw_robust_weights(item: ImageRobustWeights, path, title=None, cmap="RdYlGn", min_side=384):
    """Write ``item``'s image (shorter side displayed at about ``min_side`` px) with every GT box
    outlined in the colour of its robust weight (``cmap`` over [0, 1], red = low) and the value
    written at its top-left corner, a colour bar on the right. Boxes whose class has no prototype
    at their level (weight 1 by definition) are dashed. Boxes are one vectorised
    ``PolyCollection``; only the text labels are placed one by one."""
    from matplotlib import colormaps
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import Normalize

    h, w = item.image.shape[:2]
    scale = max(1.0, min_side / max(1, min(h, w)))
    fig = _new_figure(w * scale / 100 + 1.6, h * scale / 100 + 0.6)
    ax = fig.add_axes([0.02, 0.02, 0.78, 0.90])
    ax.imshow(item.image, interpolation="nearest")
    ax.set_axis_off()
    norm = Normalize(0.0, 1.0)
    colours = colormaps[cmap](norm(item.weights))
    b = item.boxes.reshape(-1, 4)
    verts = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [2, 3]], b[:, [0, 3]]], axis=1)
    styles = np.where(item.has_prototypes, "solid", "dashed").tolist()
    ax.add_collection(
        PolyCollection(
            verts,
            closed=True,
            facecolors="none",
            edgecolors=colours,
            linewidths=2,
            linestyles=styles or "solid",
        )
    )
    for (x0, y0), wt, col in zip(b[:, :2], item.weights, colours):
        ax.text(
            x0,
            y0,
            f"{wt:.2f}",
            color="black",
            fontsize=8,
            va="bottom",
            ha="left",
            bbox=dict(facecolor=col, alpha=0.85, pad=1, edgecolor="none"),
        )
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_title(title or f"image {item.image_id}", fontsize=9)
    from matplotlib.cm import ScalarMappable

    cax = fig.add_axes([0.84, 0.08, 0.04, 0.80])
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, label="robust weight (Eq. 8)")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path

