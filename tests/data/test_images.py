import numpy as np
import pytest
import torch
from PIL import Image

from retinaslim.data.images import ImageError, list_images, read_image
from retinaslim.errors import UserError


def test_modes_become_rgb_floats(tmp_path):
    Image.new("L", (20, 10), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (20, 10), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.fromarray(np.full((10, 20), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    Image.new("CMYK", (20, 10), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    for name, value in [("gray.png", 128 / 255), ("clear.png", 1.0), ("deep.png", 1.0), ("cmyk.jpg", 1.0)]:
        image = read_image(tmp_path / name)
        assert image.shape == (3, 10, 20) and image.dtype == torch.float32, name
        assert image.mean().item() == pytest.approx(value, abs=0.02), name


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": displayed image is 20 wide, 40 high
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert read_image(tmp_path / "rotated.jpg").shape == (3, 40, 20)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 20])
def test_undecodable_files_raise_image_error(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match="bad.jpg"):
        read_image(path)


def test_list_images(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["b.jpg", "a.PNG", "sub/c.webp", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.jpg", "c.webp"]
    (tmp_path / "list.txt").write_text("b.jpg\n# comment\nsub/c.webp\n")
    assert [p.name for p in list_images(tmp_path / "list.txt")] == ["b.jpg", "c.webp"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found"):
        list_images(tmp_path / "empty")
