"""torchvision's SSD300 and SSDLite320 with random weights that behave like trained ones, and
the comparison of their detections with a converted ssd_d2 model's."""

import torch
import torch.nn.functional as F
from torchvision.models.detection import ssd300_vgg16, ssdlite320_mobilenet_v3_large

from ssd_d2.convert import coco_category_ids
from ssd_d2.export import matched_differences

IMAGE_SIZES = [(300, 300), (480, 640), (375, 500), (200, 333), (512, 512)]


def trained_like_torchvision_ssd():
    """
    A random torchvision SSD300 (91 COCO category ids) whose outputs look like a trained
    model's: random biases, class logits of a moderate spread, a background logit that leaves
    a few dozen detections per image, and the 10 unused COCO ids never predicted (training
    never makes them a target; the converter drops them).
    """
    torch.manual_seed(0)
    model = ssd300_vgg16(weights=None, weights_backbone=None).eval()
    g = torch.Generator().manual_seed(0)
    unused = [i for i in range(1, 91) if i not in coco_category_ids()]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
        image = torch.randint(0, 256, (3, 300, 300), generator=g).float() / 255
        features = list(model.backbone(model.transform([image])[0].tensors).values())
        for conv, feature in zip(model.head.classification_head.module_list, features):
            # Same logit spread (std 2) on every level.
            conv.weight.mul_(2.0 / F.conv2d(feature, conv.weight, padding=1).std())
            weight = conv.weight.view(-1, 91, *conv.weight.shape[1:])
            bias = conv.bias.view(-1, 91)
            bias[:, 0] += 14.0
            weight[:, unused] = 0.0
            bias[:, unused] = -30.0
        for conv in model.head.regression_head.module_list:
            conv.weight.mul_(0.3)
    # torchvision's mean is (0.48235, 0.45882, 0.40784) * 255 = ssd_d2's (123, 117, 104) up to
    # 1e-3 pixel values; use the same mean so that the test measures the conversion alone.
    model.transform.image_mean = [123.0 / 255, 117.0 / 255, 104.0 / 255]
    return model


def compare_with_torchvision(ours, theirs, seed):
    """
    Run both models on random uint8 RGB images of several sizes (ssd_d2 takes them in 0-255,
    torchvision in 0-1); return the detections per image and the largest box and score
    differences over all matched detections.
    """
    # ssd_d2 computes channels-last; so does torchvision's model once its weights are. In the
    # default layout torchvision's convolutions round differently (scores differ by up to
    # ~1e-5 for SSD300 and a few 1e-5 for this random MobileNet).
    theirs.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(seed)
    images = [
        torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in IMAGE_SIZES
    ]
    with torch.no_grad():
        inputs = [{"image": x, "height": x.shape[1], "width": x.shape[2]} for x in images]
        our_outputs = ours(inputs)
        their_outputs = theirs([x.float() / 255 for x in images])

    coco_ids = torch.tensor(coco_category_ids())
    max_box, max_score, counts = 0.0, 0.0, []
    for mine, expected in zip(our_outputs, their_outputs):
        instances = mine["instances"]
        counts.append(len(instances))
        # ssd_d2 would drop boxes that are empty in the output image (detector_postprocess);
        # torchvision keeps them. Equal counts: there were none.
        assert len(instances) == len(expected["scores"])
        mine = (instances.pred_boxes.tensor, instances.scores, coco_ids[instances.pred_classes])
        expected = (expected["boxes"], expected["scores"], expected["labels"])
        # One-to-one pairs within each class; a detection without a partner raises.
        box, score = matched_differences(expected, mine)
        max_box, max_score = max(max_box, box), max(max_score, score)
    print(
        f"detections per image {counts}, max |box| diff {max_box:.2e} px, "
        f"max |score| diff {max_score:.2e}"
    )
    return counts, max_box, max_score


def random_torchvision_ssdlite(spread=2.5, background=16.0):
    """
    A random torchvision SSDLite320 MobileNetV3 (91 COCO category ids) that behaves like a
    trained one: He-normal convs (torchvision's N(0, 0.03) init gives nearly constant maps),
    norm statistics measured on random images (so activations neither vanish nor explode),
    random norm affines, and a background logit that leaves a few dozen detections per image.
    """
    torch.manual_seed(0)
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    g = torch.Generator().manual_seed(0)
    unused = [i for i in range(1, 91) if i not in coco_category_ids()]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                std = (2.0 / module.weight[0].numel()) ** 0.5
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * std)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
        for norm in norms:
            norm.weight.copy_(1 + torch.randn(norm.num_features, generator=g) * 0.1)
            norm.bias.copy_(torch.randn(norm.num_features, generator=g) * 0.1)
            norm.momentum = None  # running statistics = the average over the batches seen
        images = [torch.randint(0, 256, (3, 320, 320), generator=g).float() / 255 for _ in range(4)]
        batch = model.transform(images)[0].tensors
        model.train()
        model.head(list(model.backbone(batch).values()))
        model.eval()
        for norm in norms:
            # Four images say little about the variance of the 1x1 and 2x2 maps: a floor
            # keeps those layers from amplifying rounding errors.
            norm.running_var.clamp_(min=0.1)

        features = list(model.backbone(batch[:1]).values())
        for predictor, feature in zip(model.head.classification_head.module_list, features):
            conv = predictor[1]  # after the depthwise conv, norm and ReLU6
            conv.weight.mul_(spread / F.conv2d(predictor[0](feature), conv.weight).std())
            weight = conv.weight.view(-1, 91, *conv.weight.shape[1:])
            bias = conv.bias.view(-1, 91)
            bias[:, 0] += background
            weight[:, unused] = 0.0
            bias[:, unused] = -30.0
        for predictor in model.head.regression_head.module_list:
            predictor[1].weight.mul_(0.2)
    return model
