"""Pascal VOC folders for the data tests, laid out as Detectron2's VOC loader reads them."""

from PIL import Image


def write_voc(root, objects_per_image, split, image):
    """
    One copy of ``image`` (H x W x 3 uint8) and one XML per entry of ``objects_per_image``
    under ``root``; an object is (name, (xmin, ymin, xmax, ymax), difficult), with difficult
    None for no tag. Returns ``root`` as a string.
    """
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    height, width = image.shape[:2]
    ids = [f"{i:06d}" for i in range(len(objects_per_image))]
    for file_id, objects in zip(ids, objects_per_image):
        Image.fromarray(image).save(root / "JPEGImages" / f"{file_id}.jpg")
        xml = "".join(
            f"<object><name>{name}</name>"
            + ("" if difficult is None else f"<difficult>{difficult}</difficult>")
            + f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
            "</bndbox></object>"
            for name, (x0, y0, x1, y1), difficult in objects
        )
        (root / "Annotations" / f"{file_id}.xml").write_text(
            f"<annotation><size><width>{width}</width><height>{height}</height></size>{xml}"
            "</annotation>"
        )
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return str(root)
