"""With identical weights, adjax's networks compute what the PyTorch references compute:
anomalib's EfficientAD PDNs and autoencoder, torchvision's ResNets, Wide ResNets and VGGs, and
PatchCore's feature embedding (the reference's steps in torch). The weights travel as a user's
would: saved by torch (.pth) or safetensors, read by `adjax.weights`. Skipped where torch,
torchvision or anomalib is not installed (`pip install 'adjax[peers]'`)."""

import jax.numpy as jnp
import numpy as np
import pytest

from adjax import weights
from adjax.data.augment import imagenet_normalize

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
F = torch.nn.functional

# The largest absolute difference of each comparison and the outputs' largest magnitude,
# printed at the end (pytest -s).
DIFFERENCES: dict[str, tuple[float, float]] = {}


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    for name, (diff, scale) in sorted(DIFFERENCES.items()):
        print(f"max |adjax - torch| {name}: {diff:.3g} (outputs up to {scale:.3g})")


def _compare(name, ours, theirs, atol):
    """ours NHWC (jax), theirs NCHW (torch): equal within `atol` times the outputs' largest
    magnitude (at least 1; float32 sums of thousands of terms differ in the last digits)."""
    theirs = theirs.detach().numpy().transpose(0, 2, 3, 1)
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape
    diff, scale = float(np.abs(ours - theirs).max()), float(np.abs(theirs).max())
    DIFFERENCES[name] = (diff, scale)
    assert diff <= atol * max(1.0, scale), (name, diff, scale)


def _image(side, seed=0):
    torch.manual_seed(seed)
    x = torch.rand(2, 3, side, side)
    return x, jnp.asarray(x.numpy().transpose(0, 2, 3, 1))


def _like(module, side):
    import jax

    return jax.eval_shape(module.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32))


@pytest.mark.parametrize("size, padding", [("s", False), ("s", True), ("m", False),
                                           ("m", True)])
def test_pdn_equals_anomalibs(tmp_path, size, padding):
    ead = pytest.importorskip("anomalib.models.image.efficient_ad.torch_model")
    from adjax.models.pdn import PDN

    cls = ead.SmallPatchDescriptionNetwork if size == "s" else ead.MediumPatchDescriptionNetwork
    torch.manual_seed(1)
    net = cls(out_channels=384, padding=padding).eval()
    x, xj = _image(96)
    with torch.no_grad():
        theirs = net(x)  # anomalib normalises inside the forward pass
    ours_net = PDN(size, 384, padding=padding)
    named = tmp_path / "pretrained_teacher.pth"
    torch.save(net.state_dict(), named)
    # The reference code's nn.Sequential names the same layers by index.
    order = [k for k in net.state_dict() if k.startswith("conv")]
    index = {"s": (0, 3, 6, 8), "m": (0, 3, 6, 8, 10, 12)}[size]
    sequential = {f"{index[int(k[4]) - 1]}.{k.split('.')[1]}": v
                  for k, v in net.state_dict().items() if k in order}
    torch.save(sequential, tmp_path / "teacher.pth")
    for path in (named, tmp_path / "teacher.pth"):
        variables = weights.load(path, f"efficientad_teacher_{size}", _like(ours_net, 96),
                                 "teacher")
        ours = ours_net.apply(variables, imagenet_normalize(xj))
        _compare(f"PDN-{size.upper()} padding={padding}", ours, theirs, atol=2e-4)


@pytest.mark.parametrize("side", [256, 320])
def test_autoencoder_equals_anomalibs_at_any_size(side):
    ead = pytest.importorskip("anomalib.models.image.efficient_ad.torch_model")
    from adjax.models.autoencoder import Autoencoder

    torch.manual_seed(2)
    net = ead.AutoEncoder(out_channels=384, padding=False).eval()
    x, xj = _image(side)
    with torch.no_grad():
        theirs = net(x, image_size=(side, side))
    ours_net = Autoencoder(384)
    prefixes = [f"encoder.enconv{i}" for i in range(1, 7)] + \
        [f"decoder.deconv{i}" for i in range(1, 9)]
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    variables = weights.convs_from_torch(sd, _like(ours_net, side), prefixes, "autoencoder")
    _compare(f"autoencoder {side} px", ours_net.apply(variables, imagenet_normalize(xj)), theirs,
             atol=2e-4)


def _randomise_batch_norms(net):
    g = torch.Generator().manual_seed(3)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()


def _trunk(net, x, last):
    y = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    out = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        y = out[name] = getattr(net, name)(y)
        if name == last:
            return out


@pytest.mark.parametrize("kind, returns", [
    ("resnet18", ()), ("resnet50", ()), ("wide_resnet50_2", ()),
    ("wide_resnet101_2", ("layer2", "layer3"))])
def test_resnets_equal_torchvisions(tmp_path, kind, returns):
    from safetensors.torch import save_file

    from adjax.nn.resnet import ResNet

    torch.manual_seed(4)
    net = _randomise_batch_norms(getattr(torchvision.models, kind)())
    path = tmp_path / f"{kind}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    ours_net = ResNet(**{"resnet18": dict(depth=18), "resnet50": dict(depth=50),
                         "wide_resnet50_2": dict(depth=50, width_per_group=128),
                         "wide_resnet101_2": dict(depth=101, width_per_group=128)}[kind],
                      returns=returns)
    variables = weights.load(path, kind, _like(ours_net, 64), "backbone")
    x, xj = _image(64)
    with torch.no_grad():
        theirs = _trunk(net, x, returns[-1] if returns else "layer4")
    ours = ours_net.apply(variables, xj)
    if not returns:
        _compare(kind, ours, theirs["layer4"], atol=1e-5)
    for name in returns:
        _compare(f"{kind} {name}", ours[name], theirs[name], atol=1e-5)


@pytest.mark.parametrize("kind", ["vgg16", "vgg19"])
def test_vggs_equal_torchvisions(tmp_path, kind):
    from adjax.nn import vgg

    torch.manual_seed(5)
    net = getattr(torchvision.models, kind)().eval()
    path = tmp_path / f"{kind}.pth"
    torch.save(net.state_dict(), path)
    config = vgg.VGG16 if kind == "vgg16" else vgg.VGG19
    ours_net = vgg.VGGFeatures(vgg.feature_depth(config), config)
    variables = weights.load(path, kind, _like(ours_net, 32), "vgg")
    x, xj = _image(64)
    with torch.no_grad():
        theirs = net.features(x)
    _compare(kind, ours_net.apply(variables, xj), theirs, atol=1e-4)


def _torch_embedding(features, pre_dim, out_dim):
    """PatchCore's embedding as the reference computes it, step by step in torch."""
    patches, shapes = [], []
    for f in features:
        b, c, h, w = f.shape
        unfolded = F.unfold(f, kernel_size=3, padding=1).reshape(b, c, 3, 3, h * w)
        patches.append(unfolded.permute(0, 4, 1, 2, 3))  # [B, L, C, 3, 3]
        shapes.append((h, w))
    ref = shapes[0]
    for i in range(1, len(patches)):
        p = patches[i].reshape(patches[i].shape[0], *shapes[i], *patches[i].shape[2:])
        p = p.permute(0, 3, 4, 5, 1, 2)
        base = p.shape
        p = F.interpolate(p.reshape(-1, 1, *shapes[i]), size=ref, mode="bilinear",
                          align_corners=False)
        p = p.reshape(*base[:-2], *ref).permute(0, 4, 5, 1, 2, 3)
        patches[i] = p.reshape(p.shape[0], -1, *p.shape[-3:])
    flat = [p.reshape(-1, 1, int(np.prod(p.shape[-3:]))) for p in patches]
    pooled = torch.stack([F.adaptive_avg_pool1d(p, pre_dim).squeeze(1) for p in flat], dim=1)
    out = F.adaptive_avg_pool1d(pooled.reshape(len(pooled), 1, -1), out_dim)
    b = features[0].shape[0]
    return out.reshape(b, *ref, out_dim).permute(0, 3, 1, 2)


def test_patchcore_embedding_equals_the_torch_reference():
    from adjax.models import patchcore

    torch.manual_seed(6)
    f2, f3 = torch.randn(2, 512, 16, 16), torch.randn(2, 1024, 8, 8)
    theirs = _torch_embedding([f2, f3], 1024, 384)
    ours = patchcore.embed({"layer2": jnp.asarray(f2.numpy().transpose(0, 2, 3, 1)),
                            "layer3": jnp.asarray(f3.numpy().transpose(0, 2, 3, 1))})
    _compare("PatchCore embedding (WRN-101 widths)", ours, theirs, atol=1e-5)
