"""Drawn boxes: class colour on the box's own edge pixels, solid for human labels, dashed for machine labels."""

from PIL import Image

from retinaslim.data.draw import DASH, GAP, class_colour, draw_boxes

BLACK = (0, 0, 0)


def test_human_box_is_a_solid_outline_on_its_edge_pixels():
    image = Image.new("RGB", (60, 50))
    draw_boxes(image, [[10, 20, 40, 45]], [0], ["card"], [None], line_width=2)
    colour = class_colour(0)
    row = [image.getpixel((x, 35)) for x in range(8, 43)]  # x1 = 10 -> columns 10, 11; x2 = 40 -> columns 38, 39
    assert row == [BLACK, BLACK, colour, colour] + [BLACK] * 26 + [colour, colour, BLACK, BLACK, BLACK]
    column = [image.getpixel((25, y)) for y in range(41, 47)]  # y2 = 45 -> rows 43, 44
    assert column == [BLACK, BLACK, colour, colour, BLACK, BLACK]
    assert image.getpixel((11, 20)) == colour and image.getpixel((11, 19)) == colour  # the caption tag sits on top


def test_machine_box_is_dashed_and_classes_differ_in_colour():
    image = Image.new("RGB", (60, 50))
    draw_boxes(image, [[5, 30, 55, 48]], [1], ["passport"], [0.5], line_width=2)
    colour = class_colour(1)
    assert colour != class_colour(0)
    bottom = [image.getpixel((x, 47)) for x in range(5, 5 + 2 * (DASH + GAP))]
    assert bottom == ([colour] * DASH + [BLACK] * GAP) * 2
    assert image.getpixel((30, 40)) == BLACK  # inside the box stays untouched
