"""A stand-in for the real competition, small enough for a CPU: the real 228-label map, label sets
sampled from the real validation labels, test ids from the real test list, and images served over
HTTP from 127.0.0.1 (benchmarks.local_http) in place of the competition's image host, with the
faults a real download meets: a 404 and an HTML page where an image should be.

    with standin_server(images) as server:
        data_dir = build_standin(root, IMAT_DIR, server, n_train=250, n_validation=200, n_test=50)

The data directory has the real layout (train.json, validation.json, test.json with urls,
label_map.csv) and no images: the pipeline's download stage fetches them, so `configs/
imaterialist2018.yaml` runs on it unchanged (its image_layout per_split, pool validation).
"""
from __future__ import annotations

import io
import json
import shutil
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.local_http import LocalServer, send_body

NOT_FOUND_PATH = "/gone.jpg"  # no route: the server answers 404
HTML_PATH = "/page.html"  # a 200 whose body is a web page, as an expired image link often gives


def _labels_in(zip_path: Path) -> list:
    with zipfile.ZipFile(zip_path) as archive:
        document = json.loads(archive.read(archive.namelist()[0]))
    return document


def stand_in_image(labels: list, rng: np.random.Generator, size: int = 96) -> bytes:
    """A JPEG whose colours follow its labels (so a member has something to learn), its aspect
    varying a little as real photos' do."""
    width, height = size, int(size * rng.uniform(1.0, 1.4))
    pixels = rng.integers(40, 90, size=(height, width, 3)).astype(np.uint8)
    for position, label in enumerate(sorted(int(lab) for lab in labels)[:6]):
        colour = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], dtype=np.uint8)
        row = (position % 3) * height // 3
        col = (position // 3) * width // 2
        pixels[row + 2:row + height // 3 - 2, col + 2:col + width // 2 - 2] = colour
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def build_standin(root: Path, imat_dir: Path, server: LocalServer, n_train: int = 60, n_validation: int = 45,
                  n_test: int = 15, seed: int = 0, image_size: int = 96) -> Path:
    """The stand-in's data directory under `root`; its images become routes of `server`. One train
    image is a 404 and one validation image an HTML page (both listed by the download stage)."""
    rng = np.random.default_rng(seed)
    data_dir = Path(root) / "imat_standin"
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(imat_dir) / "label_map_228.csv", data_dir / "label_map.csv")
    validation = _labels_in(Path(imat_dir) / "validation.json.zip")
    annotations = validation["annotations"]
    chosen = rng.choice(len(annotations), size=n_train + n_validation, replace=False)
    test_ids = [image["imageId"] for image in _labels_in(Path(imat_dir) / "test.json.zip")["images"]]
    test_chosen = sorted(rng.choice(len(test_ids), size=n_test, replace=False))

    def split(name: str, rows: list, labelled: bool) -> None:
        images, labels = [], []
        for position, (image_id, label_ids) in enumerate(rows):
            path = f"/{name}/{image_id}.jpg"
            if labelled and position == 0:
                path = NOT_FOUND_PATH if name == "train" else HTML_PATH
            else:
                body = stand_in_image(label_ids or ["1"], rng, image_size)
                server.routes[path] = lambda handler, body=body: send_body(handler, body, "image/jpeg")
            images.append({"url": server.url(path), "imageId": image_id})
            if labelled:
                labels.append({"labelId": label_ids, "imageId": image_id})
        document = {"images": images, **({"annotations": labels} if labelled else {})}
        (data_dir / f"{name}.json").write_text(json.dumps(document))

    # the real splits number their images 1..N each: train reuses the sampled validation label sets
    # under its own ids 1..n_train, as the real train.json reuses ids the validation file also has
    sampled = [annotations[i] for i in chosen]
    split("train", [(str(k + 1), a["labelId"]) for k, a in enumerate(sampled[:n_train])], True)
    split("validation", [(a["imageId"], a["labelId"]) for a in sampled[n_train:]], True)
    split("test", [(test_ids[i], None) for i in test_chosen], False)
    server.routes[HTML_PATH] = lambda handler: send_body(
        handler, b"<!DOCTYPE html><html><body>This image is no longer available</body></html>", "text/html")
    return data_dir


@contextmanager
def standin_server():
    with LocalServer({}) as server:
        yield server
