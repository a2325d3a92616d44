"""The other SSDs that presets and importers follow, restated in torch from their published code's
facts and randomised: NVIDIA DeepLearningExamples' SSD300 (ResNet-50) and amdegroot's ssd.pytorch
(VGG16, VOC). Their default boxes, their head outputs and their own post-processing's detections
are compared with what ssd_jax makes of their checkpoints."""

import math
import os

import jax
import numpy as np
import pytest

import ssd_jax
from ssd_jax import configs, weights

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
nn = torch.nn
F = torch.nn.functional

pytestmark = pytest.mark.torch


def randomise(model, seed):
    """Random weights, and BatchNorm statistics far from the identity: folding must get them right."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.dtype != torch.float32:
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 1.5 + 0.5)
            elif name.endswith("running_mean"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif tensor.ndim == 4:
                fan_in = tensor.shape[1] * tensor.shape[2] * tensor.shape[3]
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * math.sqrt(2.0 / fan_in))
            elif name.endswith("weight"):  # BatchNorm scales, L2Norm
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.75)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return model.eval()


def patterned_images(count, size, seed):
    """Smooth random images, uint8 [N, S, S, 3] RGB: textures a random network responds to unevenly."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, 10, 10, 3))
    big = np.kron(coarse, np.ones((1, size // 10 + 1, size // 10 + 1, 1)))[:, :size, :size]
    return np.clip(big + rng.normal(0, 20, big.shape), 0, 255).astype(np.uint8)


def iou(a, b):
    """[N, 4] x [M, 4] corner boxes -> IoU [N, M], float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def found_fraction(ours, theirs) -> tuple[float, int]:
    """The share of their detections (per image: boxes [n, 4], scores [n], classes [n]) that ours
    hold: the same class, score within 1e-3 and IoU > 0.99."""
    found = total = 0
    for (ob, os_, oc), (tb, ts, tc) in zip(ours, theirs):
        total += len(ts)
        if not len(ts) or not len(os_):
            continue
        overlaps = iou(tb, ob)
        same = (tc[:, None] == oc[None, :]) & (np.abs(ts[:, None] - os_[None, :]) < 1e-3) & (overlaps > 0.99)
        found += int(np.sum(same.any(axis=1)))
    return found / max(total, 1), total


def ours_per_image(detections):
    return [(np.asarray(detections.boxes[b, :n]), np.asarray(detections.scores[b, :n]),
             np.asarray(detections.classes[b, :n])) for b, n in enumerate(np.asarray(detections.num_detections))]


# ----------------------------------------------------------------------------- NVIDIA's SSD300
NVIDIA_CLASSES = 81


class NvidiaSSD300(nn.Module):
    """NVIDIA DeepLearningExamples PyTorch/Detection/SSD ``SSD300(ResNet('resnet50'))``: torchvision's
    resnet50 children to layer3, layer3[0] at stride 1; five extra blocks (1x1 -> BN -> ReLU -> 3x3
    -> BN -> ReLU, no biases); 3x3 heads; outputs ``view(N, 4, -1)`` / ``view(N, 81, -1)`` per map."""

    def __init__(self):
        super().__init__()
        backbone = torchvision.models.resnet50(weights=None)
        self.feature_extractor = nn.Module()
        self.feature_extractor.feature_extractor = nn.Sequential(*list(backbone.children())[:7])
        block = self.feature_extractor.feature_extractor[-1][0]
        block.conv1.stride, block.conv2.stride, block.downsample[0].stride = (1, 1), (1, 1), (1, 1)
        channels = [1024, 512, 512, 256, 256, 256]
        blocks = []
        for i, (cin, cout, mid) in enumerate(zip(channels[:-1], channels[1:], [256, 256, 128, 128, 128])):
            strided = dict(padding=1, stride=2) if i < 3 else {}
            blocks.append(nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                                        nn.Conv2d(mid, cout, 3, bias=False, **strided), nn.BatchNorm2d(cout),
                                        nn.ReLU()))
        self.additional_blocks = nn.ModuleList(blocks)
        self.num_defaults = [4, 6, 6, 6, 4, 4]
        self.loc = nn.ModuleList([nn.Conv2d(c, n * 4, 3, padding=1) for n, c in zip(self.num_defaults, channels)])
        self.conf = nn.ModuleList([nn.Conv2d(c, n * NVIDIA_CLASSES, 3, padding=1)
                                   for n, c in zip(self.num_defaults, channels)])

    def forward(self, x):
        x = self.feature_extractor.feature_extractor(x)
        feed = [x]
        for block in self.additional_blocks:
            x = block(x)
            feed.append(x)
        locs = torch.cat([loc(s).reshape(s.size(0), 4, -1) for s, loc in zip(feed, self.loc)], 2)
        confs = torch.cat([conf(s).reshape(s.size(0), NVIDIA_CLASSES, -1) for s, conf in zip(feed, self.conf)], 2)
        return locs, confs


def nvidia_default_boxes():
    """Their ``dboxes300_coco()``: per map, sizes outer, then rows, then columns; (cx, cy, w, h)
    with all four clamped to [0, 1]."""
    fig, maps, steps = 300, [38, 19, 10, 5, 3, 1], [8, 16, 32, 64, 100, 300]
    scales, ratios = [21, 45, 99, 153, 207, 261, 315], [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    boxes = []
    for idx, size in enumerate(maps):
        sk1, sk2 = scales[idx] / fig, scales[idx + 1] / fig
        sk3 = math.sqrt(sk1 * sk2)
        sizes = [(sk1, sk1), (sk3, sk3)]
        for alpha in ratios[idx]:
            w, h = sk1 * math.sqrt(alpha), sk1 / math.sqrt(alpha)
            sizes += [(w, h), (h, w)]
        fk = fig / steps[idx]
        for w, h in sizes:
            for i in range(size):
                for j in range(size):
                    boxes.append(((j + 0.5) / fk, (i + 0.5) / fk, w, h))
    return np.clip(np.asarray(boxes, np.float64), 0, 1)


def nvidia_order_to_ours(maps=(38, 19, 10, 5, 3, 1), boxes=(4, 6, 6, 6, 4, 4)) -> np.ndarray:
    """For each of our default boxes (row, column, box order), its index in theirs (box, row, column)."""
    index, offset = [], 0
    for size, count in zip(maps, boxes):
        for row in range(size):
            for column in range(size):
                for box in range(count):
                    index.append(offset + box * size * size + row * size + column)
        offset += size * size * count
    return np.asarray(index)


def nvidia_decode_batch(locs, confs, default_boxes, criteria=0.45, max_output=200, max_num=200):
    """Their ``Encoder.decode_batch``: scale back, softmax; per class > 0 the scores > 0.05, the best
    ``max_num``, greedy NMS keeping IoU < ``criteria``; the best ``max_output`` overall."""
    locs = locs.permute(0, 2, 1).double()  # [N, P, 4]
    priors = torch.as_tensor(default_boxes)[None]
    xy = 0.1 * locs[..., :2] * priors[..., 2:] + priors[..., :2]
    wh = torch.exp(0.2 * locs[..., 2:]) * priors[..., 2:]
    corners = torch.cat([xy - 0.5 * wh, xy + 0.5 * wh], -1)
    scores = F.softmax(confs.permute(0, 2, 1).double(), dim=-1)
    results = []
    for boxes, probabilities in zip(corners, scores):
        kept_boxes, kept_scores, kept_labels = [], [], []
        for label in range(1, probabilities.shape[1]):
            score = probabilities[:, label]
            mask = score > 0.05
            candidates, score = boxes[mask], score[mask]
            if score.numel() == 0:
                continue
            order = score.argsort()[-max_num:]
            chosen = []
            while order.numel() > 0:
                best = order[-1].item()
                chosen.append(best)
                overlaps = torch.as_tensor(iou(candidates[order].numpy(), candidates[[best]].numpy()))[:, 0]
                order = order[overlaps < criteria]
            kept_boxes.append(candidates[chosen])
            kept_scores.append(score[chosen])
            kept_labels += [label] * len(chosen)
        boxes_, scores_ = torch.cat(kept_boxes), torch.cat(kept_scores)
        best = scores_.sort(dim=0)[1][-max_output:]
        results.append((boxes_[best].numpy(), scores_[best].numpy(), np.asarray(kept_labels)[best.numpy()]))
    return results


@pytest.fixture(scope="module")
def nvidia(tmp_path_factory):
    torch.manual_seed(0)
    model = randomise(NvidiaSSD300(), seed=1)
    with torch.no_grad():  # a random ResNet's features are large: heads scaled to give outputs of a few units,
        for head in (*model.loc, *model.conf):  # as a trained one does (boxes near their priors, softmax not flat)
            head.weight.mul_(1 / 300)
            head.bias.mul_(1 / 300)
    path = tmp_path_factory.mktemp("nvidia") / "nvidia_ssd300.pt"
    # As their main.py and torch hub save it: the state dict under 'model', keys prefixed 'module.'
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 65}, path)
    return model, path


def test_nvidia_default_boxes_are_the_presets(nvidia):
    ours = ssd_jax.priors(configs.ssd300_resnet50())
    theirs = nvidia_default_boxes()[nvidia_order_to_ours()]
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert np.sum(np.any(np.abs(theirs - np.clip(theirs, 0, 1)) > 0, axis=1)) == 0
    assert np.max(ours[:, :2]) <= 1.0  # the 10x10 map's last centres are clamped to 1, as theirs


def test_nvidia_checkpoint_gives_their_head_outputs_and_detections(nvidia):
    model, path = nvidia
    params, config = weights.load_ssd(str(path), "nvidia")
    assert config == configs.ssd300_resnet50()
    images = patterned_images(2, 300, seed=3)
    with torch.no_grad():
        mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
        std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
        x = (torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
        their_locs, their_confs = model(x)
    locations, logits = jax.jit(ssd_jax.SSD(config).apply)({"params": params}, images.astype(np.float32))
    order = nvidia_order_to_ours()
    their_loc = their_locs.permute(0, 2, 1).numpy()[:, order]
    their_logits = their_confs.permute(0, 2, 1).numpy()[:, order]
    loc_error = np.abs(np.asarray(locations) - their_loc).max() / np.abs(their_loc).max()
    logit_error = np.abs(np.asarray(logits) - their_logits).max() / np.abs(their_logits).max()
    print(f"\nNVIDIA SSD300 head outputs, relative error: locations {loc_error:.2e}, logits {logit_error:.2e}")
    assert loc_error < 1e-4 and logit_error < 1e-4
    theirs = nvidia_decode_batch(their_locs, their_confs, nvidia_default_boxes())
    ours = ours_per_image(ssd_jax.detect(params, images, config=config))
    fraction, total = found_fraction(ours, theirs)
    print(f"their decode_batch detections found in ours: {fraction:.2%} of {total}")
    assert total >= 200 and fraction >= 0.99


# ----------------------------------------------------------------------------- amdegroot's ssd.pytorch
VOC_CLASSES = 21
AMDEGROOT_BASE = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]
AMDEGROOT_EXTRAS = [256, "S", 512, 128, "S", 256, 128, 256, 128, 256]


def amdegroot_vgg():
    layers, channels = [], 3
    for v in AMDEGROOT_BASE:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        elif v == "C":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        else:
            layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU()]
            channels = v
    layers += [nn.MaxPool2d(3, 1, 1), nn.Conv2d(512, 1024, 3, padding=6, dilation=6), nn.ReLU(),
               nn.Conv2d(1024, 1024, 1), nn.ReLU()]
    return layers


def amdegroot_extras():
    layers, channels, flag = [], 1024, False
    for k, v in enumerate(AMDEGROOT_EXTRAS):
        if channels != "S":
            if v == "S":
                layers.append(nn.Conv2d(channels, AMDEGROOT_EXTRAS[k + 1], (1, 3)[flag], stride=2, padding=1))
            else:
                layers.append(nn.Conv2d(channels, v, (1, 3)[flag]))
            flag = not flag
        channels = v
    return layers


class L2Norm(nn.Module):
    def __init__(self, channels, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x):
        return self.weight[None, :, None, None] * x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)


class AmdegrootSSD(nn.Module):
    """amdegroot's ``build_ssd('test', 300, 21)`` up to the heads: sources vgg[22] after its ReLU
    through L2Norm(512, 20), the VGG's last ReLU, then every second extra layer after ReLU."""

    def __init__(self):
        super().__init__()
        self.vgg = nn.ModuleList(amdegroot_vgg())
        self.L2Norm = L2Norm(512, 20)
        self.extras = nn.ModuleList(amdegroot_extras())
        boxes, channels = [4, 6, 6, 6, 4, 4], [512, 1024, 512, 256, 256, 256]
        self.loc = nn.ModuleList([nn.Conv2d(c, n * 4, 3, padding=1) for n, c in zip(boxes, channels)])
        self.conf = nn.ModuleList([nn.Conv2d(c, n * VOC_CLASSES, 3, padding=1) for n, c in zip(boxes, channels)])

    def forward(self, x):
        sources = []
        for k in range(23):
            x = self.vgg[k](x)
        sources.append(self.L2Norm(x))
        for k in range(23, len(self.vgg)):
            x = self.vgg[k](x)
        sources.append(x)
        for k, v in enumerate(self.extras):
            x = F.relu(v(x))
            if k % 2 == 1:
                sources.append(x)
        loc = torch.cat([head(s).permute(0, 2, 3, 1).reshape(s.size(0), -1) for s, head in zip(sources, self.loc)], 1)
        conf = torch.cat([c(s).permute(0, 2, 3, 1).reshape(s.size(0), -1) for s, c in zip(sources, self.conf)], 1)
        return loc.view(loc.size(0), -1, 4), conf.view(conf.size(0), -1, VOC_CLASSES)


def amdegroot_priors():
    """Their ``PriorBox(voc)``: (row, column, box) order, the (cx, cy, w, h) output clamped to [0, 1]."""
    maps, steps = [38, 19, 10, 5, 3, 1], [8, 16, 32, 64, 100, 300]
    mins, maxs, ratios = [30, 60, 111, 162, 213, 264], [60, 111, 162, 213, 264, 315], [[2], [2, 3], [2, 3], [2, 3],
                                                                                       [2], [2]]
    mean = []
    for k, f in enumerate(maps):
        for i in range(f):
            for j in range(f):
                f_k = 300 / steps[k]
                cx, cy = (j + 0.5) / f_k, (i + 0.5) / f_k
                s_k = mins[k] / 300
                mean += [cx, cy, s_k, s_k]
                s_k_prime = math.sqrt(s_k * (maxs[k] / 300))
                mean += [cx, cy, s_k_prime, s_k_prime]
                for ar in ratios[k]:
                    mean += [cx, cy, s_k * math.sqrt(ar), s_k / math.sqrt(ar)]
                    mean += [cx, cy, s_k / math.sqrt(ar), s_k * math.sqrt(ar)]
    return np.clip(np.asarray(mean, np.float64).reshape(-1, 4), 0, 1)


def amdegroot_detect(loc, conf, priors, conf_thresh=0.01, nms_thresh=0.45, top_k=200):
    """Their ``Detect``: decode with variances (0.1, 0.2), softmax; per class the scores > 0.01, NMS
    over the best ``top_k`` (suppressing IoU > 0.45), all kept (its final filter is a no-op)."""
    priors = torch.as_tensor(priors)
    results = []
    for image_loc, image_conf in zip(loc.double(), F.softmax(conf.double(), dim=-1)):
        xy = priors[:, :2] + image_loc[:, :2] * 0.1 * priors[:, 2:]
        wh = priors[:, 2:] * torch.exp(image_loc[:, 2:] * 0.2)
        boxes = torch.cat([xy - wh / 2, xy + wh / 2], 1)
        out_boxes, out_scores, out_labels = [], [], []
        for label in range(1, image_conf.shape[1]):
            mask = image_conf[:, label] > conf_thresh
            scores, candidates = image_conf[mask, label], boxes[mask]
            if scores.numel() == 0:
                continue
            order = scores.argsort()[-top_k:]
            keep = []
            while order.numel() > 0:
                best = order[-1].item()
                keep.append(best)
                order = order[:-1]
                if order.numel() == 0:
                    break
                overlaps = torch.as_tensor(iou(candidates[order].numpy(), candidates[[best]].numpy()))[:, 0]
                order = order[overlaps <= nms_thresh]
            out_boxes.append(candidates[keep].numpy())
            out_scores.append(scores[keep].numpy())
            out_labels += [label] * len(keep)
        results.append((np.concatenate(out_boxes), np.concatenate(out_scores), np.asarray(out_labels)))
    return results


def test_amdegroot_checkpoint_gives_their_head_outputs_and_detections(tmp_path):
    torch.manual_seed(0)
    model = randomise(AmdegrootSSD(), seed=2)
    with torch.no_grad():
        model.L2Norm.weight.uniform_(15, 25)
        # Pixels minus the mean are ~100 and VGG has no BatchNorm: scaled so that, as in a trained
        # network, the head outputs are a few units (boxes of image size, softmax not saturated).
        model.vgg[0].weight.mul_(1 / 64)
    path = tmp_path / "ssd300_voc.pth"
    torch.save(model.state_dict(), path)
    params, config = weights.load_ssd(str(path), "amdegroot")
    np.testing.assert_allclose(ssd_jax.priors(config), amdegroot_priors(), atol=1e-6)
    images = patterned_images(2, 300, seed=4)
    with torch.no_grad():
        bgr = torch.as_tensor(images[..., ::-1].copy()).permute(0, 3, 1, 2).float()
        their_loc, their_conf = model(bgr - torch.tensor([104.0, 117.0, 123.0])[None, :, None, None])
    locations, logits = jax.jit(ssd_jax.SSD(config).apply)({"params": params}, images.astype(np.float32))
    loc_error = np.abs(np.asarray(locations) - their_loc.numpy()).max() / np.abs(their_loc.numpy()).max()
    logit_error = np.abs(np.asarray(logits) - their_conf.numpy()).max() / np.abs(their_conf.numpy()).max()
    print(f"\namdegroot SSD300 head outputs, relative error: locations {loc_error:.2e}, logits {logit_error:.2e}")
    assert loc_error < 1e-4 and logit_error < 1e-4
    theirs = amdegroot_detect(their_loc, their_conf, amdegroot_priors())
    ours = ours_per_image(ssd_jax.detect(params, images, config=config))
    fraction, total = found_fraction(ours, theirs)
    print(f"their Detect's detections found in ours: {fraction:.2%} of {total}")
    assert total >= 200 and fraction >= 0.99


def test_every_command_line_takes_every_published_format():
    experiments = os.path.join(os.path.dirname(__file__), os.pardir, "experiments")
    for script in ("detect.py", "export.py"):
        text = open(os.path.join(experiments, script)).read()
        assert all(f'"{name}"' in text for name in weights.SSD_FORMATS), script
    assert set(weights.STATE_DICT_IMPORTS) | {"caffe"} == set(weights.SSD_FORMATS)
