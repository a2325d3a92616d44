"""The base networks other than VGG16, against torchvision on the same random weights:
SSDLite320 on MobileNetV3-Large (torchvision's ``ssdlite320_mobilenet_v3_large``: priors, head
outputs, detections), torchvision's ImageNet MobileNetV3-Large and ResNet-50 as backbones.

Skipped when torch/torchvision are not installed (pip install -e '.[torch]').
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_torchvision_parity import (
    found_fraction,
    patterned_images,
    relative_error,
    torch_images,
    torchvision_anchors,
    torchvision_head_outputs,
)

import ssd_jax
from ssd_jax import boxes as box_lib
from ssd_jax import configs, weights
from ssd_jax.models import SSD, MobileNetV3Large, ResNet50Base, check_params, mobilenet_v3

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytestmark = [pytest.mark.torch, pytest.mark.slow]


def calibrate_batch_norms(model, forward, seed=0):
    """Random BatchNorm scales and shifts, and running statistics of one batch of ``forward()``
    in training mode: folding them is put to the test, and the activations stay in range (with
    arbitrary statistics the ReLU6s saturate and whole maps score alike: ties)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.momentum = 1.0  # the running statistics become this batch's
        model.train()
        forward()
    return model.eval()


def ssdlite_forward(model, images):
    x = torch.from_numpy(images).permute(0, 3, 1, 2) / 127.5 - 1.0
    return lambda: model.head(list(model.backbone(x).values()))


def state_of(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def ssdlite():
    torch.manual_seed(0)
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    model = calibrate_batch_norms(model, ssdlite_forward(model, patterned_images(4, 320, 320, seed=5)))
    state = state_of(model)
    config = weights.torchvision_config(state)
    return model, weights.from_torchvision(state), config


def test_ssdlite_config_read_from_the_state_dict(ssdlite):
    _, _, config = ssdlite
    assert config == configs.ssdlite320_mobilenet_v3_large()  # reduced tail, as torchvision without a backbone
    assert config.num_classes == 91 and config.num_priors == 3234


def test_ssdlite_priors_equal_torchvision_default_boxes(ssdlite):
    model, _, config = ssdlite
    ours = np.asarray(box_lib.centers_to_corners(ssd_jax.priors(config))) * 320
    np.testing.assert_allclose(ours, torchvision_anchors(model, 320), atol=1e-4)


def test_ssdlite_head_outputs_equal_torchvision(ssdlite):
    model, params, config = ssdlite
    images = patterned_images(2, 320, 320)
    their_loc, their_logits = torchvision_head_outputs(model, images)
    loc, logits = jax.jit(SSD(config).apply)({"params": params}, images)
    loc_error = relative_error(loc, their_loc)
    logit_error = relative_error(logits, their_logits)
    print(f"\nSSDLite head outputs, relative error vs torchvision (float32): locations {loc_error:.2e}, "
          f"logits {logit_error:.2e}")
    assert loc_error < 1e-4 and logit_error < 1e-4


def test_ssdlite_detections_equal_torchvision(ssdlite):
    model, params, config = ssdlite
    images = patterned_images(2, 320, 320)
    with torch.no_grad():
        theirs = model(torch_images(images))  # score 0.001, NMS 0.55, top 300, 300 per image
    ours = ssd_jax.detect(params, images, config=config, score_threshold=0.001, iou_threshold=0.55,
                          pre_nms_top_k=300, max_detections=300)
    fraction, total = found_fraction(ours, theirs, 320, 320)
    print(f"\nSSDLite: {fraction:.2%} of torchvision's {total} detections found in ours")
    assert total > 100 and fraction >= 0.99


def test_imagenet_mobilenet_v3_large_gives_torchvision_features():
    torch.manual_seed(1)
    norm = torch.nn.BatchNorm2d  # eps is set below as SSDLite's (torchvision's classifier uses 0.001 too)
    classifier = torchvision.models.mobilenet_v3_large(weights=None, norm_layer=norm)
    for module in classifier.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = mobilenet_v3.BN_EPS
    x = np.random.default_rng(0).normal(0, 1, (2, 160, 160, 3)).astype(np.float32)
    calibrate_batch_norms(classifier, lambda: classifier.features(torch.from_numpy(x).permute(0, 3, 1, 2)), seed=1)
    params = weights.from_mobilenet_v3_large(state_of(classifier))["backbone"]
    with torch.no_grad():
        y = torch.from_numpy(x).permute(0, 3, 1, 2)
        features = classifier.features
        first = features[13].block[0](features[:13](y))
        last = features(y)
    ours = MobileNetV3Large().apply({"params": params}, x)
    for mine, theirs in zip(ours, (first, last)):
        error = relative_error(mine, theirs.permute(0, 2, 3, 1).numpy())
        assert error < 1e-4, error


def test_imagenet_resnet50_gives_torchvision_conv4_features():
    torch.manual_seed(2)
    resnet = torchvision.models.resnet50(weights=None)
    x = np.random.default_rng(0).normal(0, 1, (1, 300, 300, 3)).astype(np.float32)
    calibrate_batch_norms(resnet, lambda: resnet(torch.from_numpy(x).permute(0, 3, 1, 2)), seed=2)
    params = weights.from_resnet50(state_of(resnet))["backbone"]
    # NVIDIA's SSD300: conv4_x's first block at stride 1.
    block = resnet.layer3[0]
    block.conv2.stride = (1, 1)
    block.downsample[0].stride = (1, 1)
    with torch.no_grad():
        y = torch.from_numpy(x).permute(0, 3, 1, 2)
        for layer in (resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1, resnet.layer2,
                      resnet.layer3):
            y = layer(y)
    (ours,) = ResNet50Base().apply({"params": params}, x)
    assert ours.shape == (1, 38, 38, 1024)
    error = relative_error(ours, y.permute(0, 2, 3, 1).numpy())
    print(f"\nResNet-50 conv4_x, relative error vs torchvision: {error:.2e}")
    assert error < 1e-4


def test_backbone_weights_merge_into_the_presets():
    torch.manual_seed(3)
    resnet = torchvision.models.resnet50(weights=None)
    params = ssd_jax.init(jax.random.key(0), configs.ssd300_resnet50())
    merged = weights.merge_backbone(params, weights.from_resnet50(state_of(resnet)))
    np.testing.assert_allclose(merged["backbone"]["conv1"]["kernel"][..., 0, 0],
                               resnet.conv1.weight.detach().numpy()[0, 0] / np.sqrt(1 + 1e-5), rtol=1e-6)
    classifier = torchvision.models.mobilenet_v3_large(weights=None)
    full = ssd_jax.init(jax.random.key(0), configs.get("ssdlite320_mobilenet_v3_large_full"))
    merged = weights.merge_backbone(full, weights.from_mobilenet_v3_large(state_of(classifier)))
    assert merged["backbone"]["last"]["kernel"].shape == (1, 1, 160, 960)
    with pytest.raises(weights.WeightImportError, match="shape"):  # the reduced tail cannot take them
        weights.merge_backbone(ssd_jax.init(jax.random.key(0), configs.ssdlite320_mobilenet_v3_large()),
                               weights.from_mobilenet_v3_large(state_of(classifier)))


def shapes_batch(image_size, batch_size=2, max_boxes=4, seed=0):
    """A batch of the synthetic shapes at the model's input size (labels 1..5; 0 is background)."""
    from ssd_jax.data import shapes

    rng = np.random.default_rng(seed)
    batch = {"image": [], "boxes": [], "labels": [], "mask": []}
    for _ in range(batch_size):
        image, boxes, labels = shapes.generate_example(rng, image_size, image_size)
        n = min(len(boxes), max_boxes)
        batch["image"].append(image)
        batch["boxes"].append(np.pad(boxes[:n], ((0, max_boxes - n), (0, 0))))
        batch["labels"].append(np.pad(labels[:n] + 1, (0, max_boxes - n)).astype(np.int32))
        batch["mask"].append(np.arange(max_boxes) < n)
    return {key: np.stack(value) for key, value in batch.items()}


def test_resnet50_preset_trains_with_batch_norm():
    """A few steps on one batch of the shapes data, BatchNorm in training mode: the loss falls,
    and the folded parameters are those of the plain model (the fold itself: test_batch_norm).
    One preset trains here (each train step of a preset compiles for a minute on 2 cores);
    SSDLite's BatchNorms in training mode are checked by the next test, without gradients."""
    from ssd_jax import train

    preset = "ssd300_resnet50"
    config = train.default_config()
    config.update(model=preset, optimizer="adam", learning_rate=1e-3, warmup_steps=0, batch_norm=True, gradients="xla")
    model_config = configs.get(preset, num_classes=6)
    optimizer, schedule = train.make_optimizer(config), train.learning_rate_schedule(config)
    mesh = train.data_mesh(jax.devices()[:1])
    step = train.jit_train_step(model_config, optimizer, schedule, mesh)
    state = train.replicate(train.initial_state(config, model_config, optimizer), mesh)
    batch = shapes_batch(model_config.image_size)
    losses = []
    for _ in range(5):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    print(f"\n{preset}: losses {np.round(losses, 3)}")
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    check_params(train.inference_params(state), model_config)


def test_ssdlite_batch_norms_normalise_with_the_batch_in_training_mode():
    """SSDLite with BatchNorm, training mode: every BatchNorm's running statistics move towards
    the batch's, its outputs are finite, and evaluation mode with the initial statistics (mean 0,
    variance 1, scale 1, bias 0) computes the plain model (identity BatchNorms, up to eps)."""
    from ssd_jax.models import init_batch_norm

    model_config = configs.get("ssdlite320_mobilenet_v3_large", num_classes=6)
    params, stats = init_batch_norm(ssd_jax.init(jax.random.key(0), model_config), model_config)
    images = jnp.asarray(shapes_batch(model_config.image_size)["image"], jnp.float32)
    model = SSD(model_config, batch_norm=True)
    (locations, logits), updated = jax.jit(functools.partial(model.apply, train=True, mutable=("batch_stats",)))(
        {"params": params, "batch_stats": stats}, images)
    assert np.isfinite(np.asarray(locations)).all() and np.isfinite(np.asarray(logits)).all()
    moved = jax.tree.map(lambda new, old: bool(np.any(np.asarray(new) != np.asarray(old))),
                         updated["batch_stats"], stats)
    assert all(jax.tree.leaves(moved)), "a BatchNorm's statistics did not move in training mode"
    evaluated = jax.jit(model.apply)({"params": params, "batch_stats": stats}, images)
    plain = jax.jit(SSD(model_config).apply)({"params": ssd_jax.init(jax.random.key(0), model_config)}, images)
    for a, b in zip(evaluated, plain):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(jnp.abs(b).max()))
