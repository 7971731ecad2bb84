"""Class names and colour palettes of the supported datasets."""
from ..config import IGNORE_INDEX, REDUCE_ZERO_LABEL

__all__ = ["CLASSES", "PALETTES", "REDUCE_ZERO_LABEL", "voc_palette", "num_classes", "class_names", "palette_of"]

CLASSES = {
    "pascal": [
        "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
        "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
    ],
    "cityscapes": [
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
        "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
    ],
    "coco": [
        "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
        "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
        "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie",
        "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
        "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
        "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
        "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
        "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
        "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
    ],
    # ADE20K (SceneParsing, 150 classes), in the order of its objectInfo150 table; masks hold 0 = "other"
    # and 1..150, read with reduce-zero-label (see allspark.data.semi).
    "ade20k": [
        'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass', 'cabinet',
        'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
        'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk',
        'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
        'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand',
        'path', 'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge',
        'bookcase', 'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove',
        'palm', 'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus',
        'towel', 'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television receiver',
        'airplane', 'dirt track', 'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle',
        'buffet', 'poster', 'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything',
        'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven',
        'ball', 'food', 'step', 'tank', 'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake',
        'dishwasher', 'screen', 'blanket', 'sculpture', 'hood', 'sconce', 'vase', 'traffic light', 'tray',
        'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor', 'bulletin board', 'shower', 'radiator', 'glass',
        'clock', 'flag',
    ],
    # The built-in toy dataset (allspark.data.toy): each object class is one shape with one texture.
    "toy": ["background", "striped disk", "checkered square", "dotted triangle", "plain cross"],
}


def voc_palette(n=256):
    """Pascal VOC's colour map: class i -> (r, g, b) from the bits of i."""
    palette = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append((r, g, b))
    return palette


PALETTES = {
    "pascal": voc_palette(21),
    "cityscapes": [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
        (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
        (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    "coco": voc_palette(81),
    "ade20k": voc_palette(150),
    "toy": voc_palette(5),
}
IGNORE_COLOUR = (255, 255, 255)  # ignore (255) pixels, as VOC draws its border band


def num_classes(name):
    """Number of classes of a known dataset name."""
    return len(CLASSES[name])


def class_names(cfg):
    """A config's class names: its ``classes``, else a known dataset's names, else '0', '1', ..."""
    names = cfg.get("classes") or CLASSES.get(cfg["dataset"])
    return names if names is not None and len(names) == cfg["nclass"] else [str(i) for i in range(cfg["nclass"])]


def palette_of(name, n=None, colours=None):
    """A 256-entry flat RGB list for PIL's ``putpalette``: ``colours`` (a config's palette), else the
    dataset's colours (or VOC's for an unknown name with ``n`` classes), white for 255."""
    colours = [tuple(c) for c in colours] if colours else PALETTES.get(name) or voc_palette(n or 256)
    flat = [0] * (256 * 3)
    for i, rgb in enumerate(colours[:IGNORE_INDEX]):
        flat[3 * i:3 * i + 3] = rgb
    flat[IGNORE_INDEX * 3:IGNORE_INDEX * 3 + 3] = IGNORE_COLOUR
    return flat
