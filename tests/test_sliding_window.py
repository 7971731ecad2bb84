"""Sliding-window evaluation on the image sizes of real datasets: every pixel covered, the release's
windows kept wherever the encoder takes them, and a cut edge window the encoder cannot take moved back."""
import pytest
import torch

from allspark.engine.evaluate import sliding_window, window_grid
from allspark.models import build_model
from helpers import tiny_model_cfg


def release_grid(h, w, window):
    """The AllSpark release's windows: every int(2/3 window) px, cut at the border."""
    stride = int(window * 2 / 3)
    return [(r, c) for r in range(0, h, stride) for c in range(0, w, stride)]


class Recorder:
    """Certain class 1 everywhere; records the window sizes; takes windows of at least 29 px (MiT's)."""
    min_input_size = 29

    def __init__(self):
        self.sizes = []

    def __call__(self, x):
        assert min(x.shape[-2:]) >= self.min_input_size, f"window {tuple(x.shape[-2:])} too small"
        self.sizes.append(tuple(x.shape[-2:]))
        logits = torch.full((x.shape[0], 3, *x.shape[-2:]), -30.0)
        logits[:, 1] = 30.0
        return logits


@pytest.mark.parametrize("h, w, window, release_valid", [
    (366, 500, 513, False),  # Pascal: a 24-px edge row at 342
    (343, 500, 513, False),  # a 1-px edge row
    (500, 357, 513, False),  # a 15-px edge column
    (612, 612, 513, True),   # 270-px edge windows: the release's windows
    (1024, 2048, 801, True),  # Cityscapes: the release's windows, unchanged
])
def test_every_pixel_covered_and_release_windows_kept(h, w, window, release_valid):
    model = Recorder()
    scores = sliding_window(model, torch.zeros(1, 3, h, w), window, 3)
    assert (scores[0, 1] > 0.5).all(), "every pixel covered"
    grid = window_grid(h, w, window, min_size=Recorder.min_input_size)
    assert len(model.sizes) == len(grid) == len(set(grid)), "no window twice"
    if release_valid:
        assert grid == release_grid(h, w, window)
    else:
        assert grid != release_grid(h, w, window)
        assert all(min(h - r, window) >= 29 and min(w - c, window) >= 29 for r, c in grid)


def release_sliding_window(model, img, window, num_classes):
    """The release's loop, written out: windows every int(2/3 window) px, cut at the border, softmax summed."""
    b, _, h, w = img.shape
    stride = int(window * 2 / 3)
    final = torch.zeros(b, num_classes, h, w)
    for row in range(0, h, stride):
        for col in range(0, w, stride):
            part = img[:, :, row:min(h, row + window), col:min(w, col + window)]
            final[:, :, row:min(h, row + window), col:min(w, col + window)] += model(part).softmax(dim=1)
    return final


class ContentModel:
    """Logits that depend on the window's pixels and on its size (as a real model's do)."""
    min_input_size = 29

    def __call__(self, x):
        return torch.cat([x, x.mean(dim=(2, 3), keepdim=True).expand_as(x)], dim=1) * 3.0


@pytest.mark.parametrize("h, w, window", [(612, 612, 513), (1024, 2048, 801)])
def test_same_scores_as_the_release_where_its_windows_are_valid(h, w, window):
    img = torch.randn(1, 3, h, w)
    ours = sliding_window(ContentModel(), img, window, 6)
    assert torch.equal(ours, release_sliding_window(ContentModel(), img, window, 6))


def test_edge_window_moved_back_to_end_at_the_border():
    # 700 px at 513 (stride 342): the release's starts 0, 342, 684 leave a 16-px edge; it starts at 700 - 513
    assert [r for r, _ in window_grid(700, 100, 513, min_size=29)] == [0, 342, 187]
    assert [r for r, _ in window_grid(700, 100, 513)] == [0, 342, 684], "a model without a minimum: the release's"
    # 366 px: the moved edge window would repeat the first one (start 0): dropped
    assert [r for r, _ in window_grid(366, 100, 513, min_size=29)] == [0]


def test_real_mit_model_runs_on_pascal_sizes():
    """A MiT model (29-px minimum) scores a 366 x 500 image at window 513, where the release raises."""
    model = build_model(tiny_model_cfg(num_class=3, image_size=65)).eval()
    assert model.min_input_size == 29
    with torch.no_grad():
        with pytest.raises(RuntimeError):  # the release's 22-px edge window (starts 0, 43, ..., 344)
            model(torch.randn(1, 3, 366 - 344, 65))
        scores = sliding_window(model, torch.randn(1, 3, 366, 100), 65, 3)
    assert scores.shape == (1, 3, 366, 100) and (scores.sum(1) > 0.99).all()
