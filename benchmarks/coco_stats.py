"""COCO train2017's class frequencies, and a COCO-like annotation set built from them.

``INSTANCES``: annotations per class in ``instances_train2017.json`` (they sum to 860,001, the
file's total). ``IMAGES``: images that hold the class (published per-class statistics of the
same file; person 64,115 and car 12,251, for instance). 118,287 training images, most 640x480.

:func:`coco_like_dicts` spreads each class's instances over its number of images (drawn
independently per class: real COCO classes co-occur more than that, which only helps a sampler
that reuses images) with box sizes from a log-normal fitted to COCO's size split (41% small,
< 32^2 px; 34% medium, < 96^2; 24% large) and aspect ratios up to 3. With the real file
(``--coco-json``) the benchmarks use it instead.
"""
import numpy as np
from detectron2.structures import BoxMode

NUM_IMAGES = 118287
IMAGE_HW = (480, 640)

# class: (instances, images)
COCO_TRAIN2017 = {
    "person": (262465, 64115), "bicycle": (7113, 3252), "car": (43867, 12251), "motorcycle": (8725, 3502),
    "airplane": (5135, 2986), "bus": (6069, 3952), "train": (4571, 3588), "truck": (9973, 6127),
    "boat": (10759, 3025), "traffic light": (12884, 4139), "fire hydrant": (1865, 1711),
    "stop sign": (1983, 1734), "parking meter": (1285, 705), "bench": (9838, 5570), "bird": (10806, 3237),
    "cat": (4768, 4114), "dog": (5508, 4385), "horse": (6587, 2941), "sheep": (9509, 1529),
    "cow": (8147, 1968), "elephant": (5513, 2143), "bear": (1294, 960), "zebra": (5303, 1916),
    "giraffe": (5131, 2546), "backpack": (8720, 5528), "umbrella": (11431, 4142), "handbag": (12354, 6841),
    "tie": (6496, 3810), "suitcase": (6192, 2402), "frisbee": (2682, 2268), "skis": (6646, 3082),
    "snowboard": (2685, 1654), "sports ball": (6347, 4262), "kite": (9076, 2352), "baseball bat": (3276, 2603),
    "baseball glove": (3747, 2629), "skateboard": (5543, 3476), "surfboard": (6126, 3486),
    "tennis racket": (4812, 3394), "bottle": (24342, 8501), "wine glass": (7913, 2533), "cup": (20650, 9189),
    "fork": (5479, 3555), "knife": (7770, 4326), "spoon": (6165, 3529), "bowl": (14358, 7111),
    "banana": (9458, 2243), "apple": (5851, 1586), "sandwich": (4373, 2365), "orange": (6399, 1699),
    "broccoli": (7308, 1939), "carrot": (7852, 1683), "hot dog": (2918, 1222), "pizza": (5821, 3166),
    "donut": (7179, 1523), "cake": (6353, 2925), "chair": (38491, 12774), "couch": (5779, 4423),
    "potted plant": (8652, 4452), "bed": (4192, 3682), "dining table": (15714, 11837), "toilet": (4157, 3353),
    "tv": (5805, 4768), "laptop": (4970, 3524), "mouse": (2262, 1964), "remote": (5703, 3221),
    "keyboard": (2855, 2115), "cell phone": (6434, 4803), "microwave": (1673, 1547), "oven": (3334, 2877),
    "toaster": (225, 217), "sink": (5610, 4678), "refrigerator": (2637, 2360), "book": (24715, 5332),
    "clock": (6334, 4659), "vase": (6613, 3593), "scissors": (1481, 975), "teddy bear": (4793, 2140),
    "hair drier": (198, 189), "toothbrush": (1954, 1007),
}
assert sum(n for n, _ in COCO_TRAIN2017.values()) == 860001


def coco_like_dicts(seed: int = 0, num_images: int = NUM_IMAGES):
    """Detectron2 dataset dicts (no files) with COCO train2017's per-class instance and image
    counts, scaled by ``num_images / 118287``."""
    rng = np.random.default_rng(seed)
    frac = num_images / NUM_IMAGES
    img, cls = [], []
    for c, (n_inst, n_img) in enumerate(COCO_TRAIN2017.values()):
        n_img, n_inst = max(1, round(n_img * frac)), max(1, round(n_inst * frac))
        images = rng.choice(num_images, n_img, replace=False)
        extra = rng.multinomial(n_inst - n_img, np.full(n_img, 1 / n_img))  # >= 1 per image
        img.append(np.repeat(images, 1 + extra))
        cls.append(np.full(n_inst, c))
    img, cls = np.concatenate(img), np.concatenate(cls)
    # sqrt(area) log-normal: P(< 32) = 0.41, P(< 96) = 0.75; aspect ratio log-uniform in [1/3, 3].
    side = np.exp(rng.normal(3.744, 1.218, len(img)))
    ratio = np.exp(rng.uniform(-np.log(3), np.log(3), len(img)))
    h, w = IMAGE_HW
    bw = np.clip(side * np.sqrt(ratio), 1, w - 1)
    bh = np.clip(side / np.sqrt(ratio), 1, h - 1)
    x0 = rng.uniform(0, 1, len(img)) * (w - bw)
    y0 = rng.uniform(0, 1, len(img)) * (h - bh)
    order = np.argsort(img, kind="stable")
    bounds = np.searchsorted(img[order], np.arange(num_images + 1))
    dicts = []
    for i in range(num_images):
        rows = order[bounds[i] : bounds[i + 1]]
        anns = [
            {"bbox": [x0[r], y0[r], bw[r], bh[r]], "bbox_mode": BoxMode.XYWH_ABS, "category_id": int(cls[r]), "iscrowd": 0}
            for r in rows
        ]
        dicts.append({"file_name": f"{i:012d}.jpg", "image_id": i, "height": h, "width": w, "annotations": anns})
    return dicts
