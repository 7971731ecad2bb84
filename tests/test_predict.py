"""predict.py's pieces: what it reads from folders, lists and files, how it batches, what it writes."""
import numpy as np
import pytest
from PIL import Image

from allspark.data import DataError
from allspark.data.classes import palette_of
from allspark.engine.predict import batches_of_equal_size, collect_inputs, write_prediction


def test_inputs_from_folders_lists_and_files(tmp_path):
    for rel, size in (("a/1.jpg", (20, 10)), ("a/b/2.png", (20, 10)), ("a/3.jpg", (30, 10)), ("a/notes.txt", None)):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        if size:
            Image.new("RGB", size).save(tmp_path / rel)
        else:
            (tmp_path / rel).write_text("not an image")
    items = collect_inputs([tmp_path / "a"])
    assert [name for _, name in items] == ["1", "3", "b/2"]
    (tmp_path / "list.txt").write_text("a/3.jpg masks/3.png\na/b/2.png\n")
    assert [(p, n) for p, n in collect_inputs([tmp_path / "list.txt"], root=tmp_path)] == \
        [(tmp_path / "a/3.jpg", "a/3"), (tmp_path / "a/b/2.png", "a/b/2")]
    assert collect_inputs([tmp_path / "a/1.jpg"]) == [(tmp_path / "a/1.jpg", "1")]
    with pytest.raises(DataError, match="input not found: .*nowhere"):
        collect_inputs([tmp_path / "nowhere"])
    (tmp_path / "bad.txt").write_text("a/9.jpg\n")
    with pytest.raises(DataError, match=r"1 listed image\(s\) not found"):
        collect_inputs([tmp_path / "bad.txt"], root=tmp_path)
    # only images of one size share a batch, at most batch_size of them
    batches = list(batches_of_equal_size(collect_inputs([tmp_path / "a/1.jpg", tmp_path / "a/b/2.png", tmp_path / "a/3.jpg",
                                            tmp_path / "a/1.jpg"]), 4))
    assert [[name for _, name in b] for b in batches] == [["1", "2"], ["3"], ["1"]]
    assert [len(b) for b in batches_of_equal_size(collect_inputs([tmp_path / "a/1.jpg"] * 5), 2)] == [2, 2, 1]


def test_written_files(tmp_path):
    pred = np.array([[0, 1], [2, 1]])
    write_prediction(tmp_path, "x/y", pred, palette_of("pascal"), Image.new("RGB", (2, 2)), np.ones((3, 2, 2)))
    png = Image.open(tmp_path / "x/y.png")
    assert png.mode == "P" and (np.array(png) == pred).all()
    assert (tmp_path / "overlay/x/y.jpg").is_file() and np.load(tmp_path / "logits/x/y.npy").shape == (3, 2, 2)
