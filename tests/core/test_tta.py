import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retinaslim.core.detections import Detections
from retinaslim.core.tta import Transform, make_transforms


def forward_boxes(transform: Transform, boxes, original_hw, resized_hw):
    """Map original-image boxes onto the transformed image, written independently of Transform.invert."""
    (height, width), (h, w) = original_hw, resized_hw
    out = boxes.clone()
    out[:, [0, 2]] *= w / width
    out[:, [1, 3]] *= h / height
    if transform.hflip:
        out[:, [0, 2]] = w - out[:, [2, 0]]
    if transform.vflip:
        out[:, [1, 3]] = h - out[:, [3, 1]]
    for _ in range(transform.rot // 90):  # counter-clockwise: (x, y) -> (y, W - x), size (H, W) -> (W, H)
        out = torch.stack([out[:, 1], w - out[:, 2], out[:, 3], w - out[:, 0]], dim=1)
        h, w = w, h
    return out, (h, w)


@settings(max_examples=300, deadline=None)
@given(
    height=st.integers(8, 2000), width=st.integers(8, 2000),
    size=st.one_of(st.sampled_from([0.5, 0.75, 1.0, 1.25, 2.0]), st.integers(100, 1200)),
    hflip=st.booleans(), vflip=st.booleans(), rot=st.sampled_from([0, 90, 180, 270]), image_size=st.integers(32, 800),
    corners=st.lists(st.tuples(*[st.floats(0, 1)] * 4), min_size=1, max_size=5),
)
def test_invert_undoes_transform_for_random_boxes(height, width, size, hflip, vflip, rot, image_size, corners):
    transform = Transform(hflip=hflip, vflip=vflip, rot=rot,
                          **({"short_side": size} if isinstance(size, int) else {"scale": size}))
    boxes = torch.tensor([[min(a, c) * width, min(b, d) * height, max(a, c) * width, max(b, d) * height]
                          for a, b, c, d in corners], dtype=torch.float64)
    there, transformed_hw = forward_boxes(transform, boxes, (height, width), transform.resized_size(height, width, image_size))
    back = transform.invert(there, transformed_hw, (height, width))
    assert torch.allclose(back, boxes, atol=1e-6 * max(height, width))


def test_transform_moves_pixels_where_invert_says():
    # A bright rectangle on a 90 x 160 image: find it in each transformed image, map it back.
    image = torch.zeros(3, 90, 160)
    image[:, 20:50, 30:90] = 1.0
    truth = torch.tensor([[30.0, 20.0, 90.0, 50.0]])
    transforms = make_transforms((0.75, 1.0, 1.25), hflip=True, vflip=True, rot90=True, short_sides=(60,))
    assert len(transforms) == 4 * 2 * 2 * 3
    for transform in transforms:
        out = transform.apply(image, 128)
        if transform.short_side:
            assert min(out.shape[-2:]) == 60
        else:
            assert max(out.shape[-2:]) == round(transform.scale * 128)
        ys, xs = torch.nonzero(out[0] > 0.5, as_tuple=True)
        found = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
        back = transform.invert(found, out.shape[-2:], (90, 160))
        assert torch.allclose(back, truth, atol=2.0), (transform.name, back)


def test_make_transforms_and_names():
    names = [t.name for t in make_transforms((0.75, 1.0), hflip=True)]
    assert names == ["scale0.75", "scale0.75+hflip", "scale1", "scale1+hflip"]
    assert [t.name for t in make_transforms((), hflip=False, rot90=True, short_sides=(800,))] == [
        "short800", "short800+rot90", "short800+rot270"]
    assert [t.name for t in make_transforms((1.0,), hflip=False, short_sides=(600,))] == ["scale1", "short600"]
    for t in make_transforms((0.75, 1.0), hflip=True, vflip=True, rot90=True, short_sides=(600,)):
        assert Transform.from_name(t.name) == t
    assert len(make_transforms((1.0,), hflip=False)) == 1


def test_detections_mask_selection_and_cat():
    d = Detections(torch.tensor([[0.0, 0, 1, 1], [0, 0, 2, 2]]), torch.tensor([0.2, 0.9]), torch.tensor([0, 1]),
                   {"agreement": torch.tensor([1, 3])})
    kept = d[d.scores > 0.5]
    assert len(kept) == 1 and kept.labels.tolist() == [1] and kept.extra["agreement"].tolist() == [3]
    both = Detections.cat([d, Detections(d.boxes, d.scores, d.labels)])
    assert len(both) == 4 and both.extra == {}
